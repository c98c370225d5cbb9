#!/bin/sh
# mmdebstrap customize hook. $1 is the new root. Runs on the build host: only what
# goes through `chroot` executes guest code (emulated by qemu-user on foreign arches).
# Environment from harness/rootfs.py: BPFLAB_OVERLAY (rootfs/overlay) and
# BPFLAB_AUTHORIZED_KEY (the lab's public key).
set -eu
root="$1"

cp -a "$BPFLAB_OVERLAY/." "$root/"
chmod 0755 "$root/usr/sbin/bpflab-init"

# '*' rather than '!': no password can match, yet the account is not "locked",
# so sshd (UsePAM no) still accepts root's key.
sed -i 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"
install -d -m 0700 "$root/root/.ssh"
install -m 0600 "$BPFLAB_AUTHORIZED_KEY" "$root/root/.ssh/authorized_keys"

# One host key, made here so the client can pin it; every guest booted from this
# image shares it, and each lab builds its own image.
rm -f "$root"/etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C bpflab-guest -f "$root/etc/ssh/ssh_host_ed25519_key"

# The stock systemd boot configures eth0 with networkd (see overlay/etc/systemd).
chroot "$root" systemctl enable systemd-networkd.service
# No console login prompt: nobody has a password to type.
chroot "$root" systemctl mask serial-getty@.service getty@.service
echo bpflab > "$root/etc/hostname"
printf 'nameserver 10.0.2.3\n' > "$root/etc/resolv.conf"
