"""Take many references to one map: each MAP_GET_FD_BY_ID fd holds one.

Open files are capped per process by RLIMIT_NOFILE, and raising the hard limit needs
CAP_SYS_RESOURCE; so the references are spread over child processes, each taking as
many as its own hard limit allows and holding them until released.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import time

from .sysbpf import BpfError, map_from_id


def _child(map_id: int, count: int, report_fd: int, release_fd: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held = []
    result = f"ok {count}"
    for n in range(count):
        try:
            held.append(map_from_id(map_id))
        except BpfError as e:
            result = f"errno {e.errno} {n}"
            break
    os.write(report_fd, result.encode())
    os.read(release_fd, 1)  # hold the references until the parent is done


def take_references(map_id: int, total: int, deadline: float) -> tuple[int, int]:
    """(references taken, errno of the first refusal or 0), all released on return."""
    per_child = resource.getrlimit(resource.RLIMIT_NOFILE)[1] - 64
    release_r, release_w = os.pipe()
    pids: list[int] = []
    taken, err = 0, 0
    try:
        while taken < total and not err:
            count = min(per_child, total - taken)
            report_r, report_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(release_w)  # else the release EOF never comes
                    os.close(report_r)
                    _child(map_id, count, report_w, release_r)
                finally:
                    os._exit(0)
            pids.append(pid)
            os.close(report_w)
            ready, _, _ = select.select([report_r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"only {taken} references before the deadline")
            words = os.read(report_r, 100).decode().split()
            os.close(report_r)
            if words[0] == "ok":
                taken += int(words[1])
            else:
                err, taken = int(words[1]), taken + int(words[2])
        return taken, err
    finally:
        os.close(release_w)  # EOF releases every child
        os.close(release_r)
        for pid in pids:
            _reap(pid)


def _reap(pid: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
