"""Map-in-map from the syscall side: templates, lookups, refused inner types, limits."""

from __future__ import annotations

import errno
import time

import pytest

from bpfkit import maps
from bpfkit.expect import Declared, introduced
from bpfkit.refs import take_references
from bpfkit.sysbpf import (ENOTSUPP, F_INNER_MAP, MAP_CGROUP_STORAGE,
                           MAP_PERCPU_CGROUP_STORAGE, MAP_PROG_ARRAY, BpfError, Map,
                           create_map, errno_of, u32)


@introduced("56f668dfe0")
@pytest.mark.parametrize("kind", ["array", "hash"])
def test_outer_maps_take_an_inner_template_and_check_inserted_maps(
        commits: Declared, kind: str) -> None:
    template = maps.array(value_size=8)
    created = errno_of(lambda: maps.outer(template, 4, kind))
    commits["56f668dfe0"].check(created, new=0, old=errno.EINVAL)
    if created:
        return
    outer = maps.outer(template, 4, kind)
    same, other = maps.array(value_size=8), maps.array(value_size=16)
    observed = (errno_of(lambda: maps.put(outer, 1, same)),
                errno_of(lambda: maps.put(outer, 2, other)))
    commits["56f668dfe0"].same(observed, (0, errno.EINVAL))
    # An array iterates every index; a hash only the key that went in.
    first_key = int.from_bytes(outer.next_key(None), "little")
    commits["56f668dfe0"].same(first_key, 0 if kind == "array" else 1)


@introduced("14dc6f04f4")
def test_syscall_lookup_on_an_outer_map_returns_the_inner_map_id(commits: Declared) -> None:
    inner = maps.array()
    outer = maps.outer(inner, 2)
    maps.put(outer, 0, inner)
    try:
        got: object = int.from_bytes(outer.lookup(u32(0)), "little")
    except BpfError as e:
        got = e.errno
    # Before the commit the fd array had no syscall lookup: every slot read as ENOENT.
    commits["14dc6f04f4"].check(got, new=inner.info().id, old=errno.ENOENT)
    assert errno_of(lambda: outer.lookup(u32(1))) == errno.ENOENT, "empty slot must be ENOENT"


def cgroup_storage(map_type: int) -> Map:
    # key: struct bpf_cgroup_storage_key (16 bytes with padding); max_entries must be 0.
    try:
        return create_map(map_type, 16, 8, 0)
    except BpfError as e:
        pytest.skip(f"cannot create cgroup storage map ({e}): CONFIG_CGROUP_BPF unset?")


@pytest.mark.parametrize("map_type, commit", [
    pytest.param(MAP_CGROUP_STORAGE, "7b5dd2bde7", id="shared",
                 marks=introduced("7b5dd2bde7")),
    pytest.param(MAP_PERCPU_CGROUP_STORAGE, "c6fdcd6e0c", id="percpu",
                 marks=introduced("c6fdcd6e0c")),
])
def test_cgroup_storage_maps_are_refused_as_inner_maps(
        commits: Declared, map_type: int, commit: str) -> None:
    storage = cgroup_storage(map_type)
    observed = errno_of(lambda: maps.outer(storage))
    commits[commit].check(observed, new=ENOTSUPP, old=0)


@introduced("56f668dfe0")
def test_outer_maps_and_prog_arrays_are_refused_as_inner_maps(commits: Declared) -> None:
    prog_array = create_map(MAP_PROG_ARRAY, 4, 4, 1)
    try:
        first = maps.outer(maps.array())
        nested = errno_of(lambda: maps.outer(first))
    except BpfError as e:
        nested = int(e.errno or 0)  # no map-in-map at all: the outer type is unknown
    observed = (nested, errno_of(lambda: maps.outer(prog_array)))
    commits["56f668dfe0"].check(observed, new=(errno.EINVAL, ENOTSUPP),
                                old=(errno.EINVAL, errno.EINVAL))


@introduced("134fede4ee")
def test_hash_inner_maps_may_differ_in_max_entries(commits: Declared) -> None:
    outer = maps.outer(maps.hash_(max_entries=1), kind="hash")
    observed = errno_of(lambda: maps.put(outer, 0, maps.hash_(max_entries=2)))
    commits["134fede4ee"].check(observed, new=0, old=errno.EINVAL)


@introduced("4a8f87e60f")  # BPF_F_INNER_MAP (arraymap.c)
@introduced("134fede4ee")
def test_array_inner_maps_need_equal_max_entries_unless_flagged_inner(
        commits: Declared) -> None:
    # ARRAY keeps its own map_meta_equal: the inlined lookup bakes max_entries in.
    plain = maps.outer(maps.array(max_entries=1))
    unflagged = errno_of(lambda: maps.put(plain, 0, maps.array(max_entries=2)))

    def flagged() -> None:
        outer = maps.outer(maps.array(max_entries=1, flags=F_INNER_MAP))
        maps.put(outer, 0, maps.array(max_entries=2, flags=F_INNER_MAP))

    observed = (unflagged, errno_of(flagged))
    commits["4a8f87e60f"].check(observed, new=(errno.EINVAL, 0),
                                old=(errno.EINVAL, errno.EINVAL))


REFS = 33_000  # past BPF_MAX_REFCNT (32768), the old 32-bit limit
REFS_BUDGET_S = 120.0


@pytest.mark.slow
@introduced("1e0bd5a091")
def test_one_map_can_be_referenced_more_than_32k_times(commits: Declared) -> None:
    # fds from MAP_GET_FD_BY_ID, not outer map slots: each map-in-map update waits
    # for an RCU grace period, which makes 33k of them take minutes.
    inner = maps.array()
    deadline = time.monotonic() + REFS_BUDGET_S
    try:
        taken, err = take_references(inner.info().id, REFS, deadline)
    except TimeoutError as e:
        pytest.fail(f"inconclusive within {REFS_BUDGET_S:.0f} s: {e}")
    if not err:
        observed = "all references taken"
    elif err == errno.EBUSY and 32_700 <= taken <= 32_800:
        observed = "EBUSY near 32768"
    else:
        observed = f"errno {err} after {taken} references"
    commits["1e0bd5a091"].check(observed, new="all references taken",
                                old="EBUSY near 32768")
