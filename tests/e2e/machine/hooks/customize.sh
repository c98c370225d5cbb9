#!/bin/sh
# The lab's own guest setup (key, pinned host key, networkd on eth0), then: kexec-tools
# does not take over reboots (a reboot goes back through the firmware to the stock
# kernel, as a real machine's does).
set -eu
sh "$(dirname "$0")/../../../../rootfs/hooks/customize.sh" "$1"
printf 'LOAD_KEXEC=false\n' > "$1/etc/default/kexec"
