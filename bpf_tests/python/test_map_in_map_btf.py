"""Inner maps whose values carry BTF-described special fields: spin lock, timer, kptr."""

from __future__ import annotations

import errno
import os
import time

import pytest

from bpfkit import btf, maps, programs
from bpfkit.expect import Declared, introduced
from bpfkit.maps import VMLINUX_BTF, value_map
from bpfkit.prog import load
from bpfkit.sysbpf import (BTF_GET_NEXT_ID, ENOTSUPP, MAP_STRUCT_OPS, PROG_SOCKET_FILTER,
                           BpfError, all_ids, btf_id, btf_load, create_map, errno_of)

PROG_SCHED_CLS = 3  # bpf_spin_lock is refused in socket filters, fine in tc programs


@introduced("b7ff97925b")
@introduced("d83525ca62")
def test_spin_lock_in_inner_map_values(commits: Declared) -> None:
    inner, _ = value_map("spin_lock")
    created = errno_of(lambda: maps.outer(inner))
    # d83525ca62 refused such templates with ENOTSUPP; b7ff97925b lifted it.
    refused = ENOTSUPP if commits["d83525ca62"].present else 0
    commits["b7ff97925b"].check(created, new=0, old=refused)
    if created:
        return
    outer = maps.outer(inner)
    maps.put(outer, 0, inner)
    try:
        load(PROG_SCHED_CLS, programs.lock_inner_value(outer.fd, 4)).close()
        verdict = "program locking the inner value verifies"
    except BpfError as e:
        verdict = f"refused: {e}"
    commits["b7ff97925b"].same(verdict, "program locking the inner value verifies")


@introduced("a115d0ed72")
@introduced("d83525ca62")
def test_inner_value_offset_zero_is_readable_when_it_holds_no_spin_lock(
        commits: Declared) -> None:
    # Before a115d0ed72 the template's spin_lock_off was 0 (never copied), so the
    # verifier saw a lock at offset 0 of every inner value and refused the load.
    inner = maps.array(max_entries=2)
    outer = maps.outer(inner)
    observed = errno_of(lambda: load(PROG_SOCKET_FILTER, programs.read_inner_u32(outer.fd, 1)))
    old = errno.EACCES if commits["d83525ca62"].present else 0
    commits["a115d0ed72"].check(observed, new=0, old=old)


@introduced("68134668c1")
def test_timer_template_refuses_inner_maps_without_the_timer(commits: Declared) -> None:
    template, _ = value_map("timer")
    outer = maps.outer(template, 2)
    twin, _ = value_map("timer")
    plain = maps.array(template.value_size, 4)  # same size, no BTF: no timer
    observed = (errno_of(lambda: maps.put(outer, 0, twin)),
                errno_of(lambda: maps.put(outer, 1, plain)))
    commits["68134668c1"].check(observed, new=(0, errno.EINVAL), old=(0, 0))


@introduced("40ec00abf1")
@introduced("68134668c1")
def test_program_can_init_a_timer_in_an_inner_map_value(commits: Declared) -> None:
    # The verifier refuses bpf_timer_init on a map without BTF ("has to have BTF in
    # order to use bpf_timer"): for inner maps that BTF is the template's, kept by
    # 40ec00abf1. Before 68134668c1 there is no timer helper at all (EINVAL too).
    template, _ = value_map("timer")
    outer = maps.outer(template)
    observed = errno_of(lambda: load(PROG_SCHED_CLS, programs.init_inner_timer(outer.fd, 8)))
    commits["40ec00abf1"].check(observed, new=0, old=errno.EINVAL)


def btf_alive(ident: int) -> bool:
    return ident in all_ids(BTF_GET_NEXT_ID)


def wait_gone(ident: int, timeout: float) -> bool:
    """The BTF id disappears once its last reference goes (freed via RCU/work)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not btf_alive(ident):
            return True
        time.sleep(0.05)
    return False


@introduced("40ec00abf1")
def test_outer_map_keeps_the_inner_template_btf_alive(commits: Declared) -> None:
    inner, blob = value_map("none")
    ident = btf_id(blob.fd)
    outer = maps.outer(inner)
    inner.close()
    blob.close()
    # Without the commit nothing holds the BTF any more: it goes within moments.
    alive = not wait_gone(ident, 1.0)
    outer.close()
    gone_after = wait_gone(ident, 10.0)
    commits["40ec00abf1"].check((alive, gone_after), new=(True, True), old=(False, True))


@introduced("03b77e17ae")  # kptr tag renamed: "kptr" -> "kptr_untrusted"
@introduced("61df10c779")
def test_kptr_template_refuses_inner_maps_without_the_kptr(commits: Declared) -> None:
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip("no vmlinux BTF (CONFIG_DEBUG_INFO_BTF unset): kptr targets resolve there")
    # The tag spelling is a prerequisite decided by release, not the checked behaviour.
    tag = "kptr_untrusted" if commits["03b77e17ae"].present else "kptr"
    template, _ = value_map("kptr", tag)
    outer = maps.outer(template, 2)
    twin, _ = value_map("kptr", tag)
    plain = maps.array(template.value_size, 4)
    observed = (errno_of(lambda: maps.put(outer, 0, twin)),
                errno_of(lambda: maps.put(outer, 1, plain)))
    commits["61df10c779"].check(observed, new=(0, errno.EINVAL), old=(0, 0))


@introduced("85d33df357")
def test_struct_ops_maps_are_refused_as_inner_maps(commits: Declared) -> None:
    if not commits["85d33df357"].present:
        # The commit brought the map type and its refusal as inner map together.
        observed = errno_of(lambda: create_map(MAP_STRUCT_OPS, 4, 8, 1, vmlinux_value_type=1))
        commits["85d33df357"].check(observed, new=None, old=errno.EINVAL)
        return
    if not os.path.exists(VMLINUX_BTF):
        pytest.skip("no vmlinux BTF (CONFIG_DEBUG_INFO_BTF unset): struct_ops types live there")
    with open(VMLINUX_BTF, "rb") as f:
        vmlinux = f.read()
    name = "bpf_struct_ops_tcp_congestion_ops"
    # map_create wants some program BTF fd next to the vmlinux value type id.
    any_btf = btf_load(btf.value_with("none").blob)
    try:
        type_id, size = btf.find_type(vmlinux, name, btf.KIND_STRUCT)
        st_ops = create_map(MAP_STRUCT_OPS, 4, size, 1, btf_fd=any_btf.fd,
                            vmlinux_value_type=type_id)
    except (KeyError, BpfError) as e:
        pytest.skip(f"no tcp_congestion_ops struct_ops map here (CONFIG_INET?): {e}")
    commits["85d33df357"].same(errno_of(lambda: maps.outer(st_ops)), ENOTSUPP)
