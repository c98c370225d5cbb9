"""A sleepable program run in a thread and parked on a userfaultfd page fault.

While parked it sits inside an RCU tasks trace read section (and, for the UAF recipe,
holds an inner map pointer it looked up before the fault), for as long as the test
wants: the fault is only resolved by release().
"""

from __future__ import annotations

import threading

from .prog import RunResult, run
from .sysbpf import Fd, u64
from .uffd import UserFaultPage


class Parked:
    def __init__(self, prog: Fd, page: UserFaultPage) -> None:
        self.page = page
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        # daemon: a thread stuck in the kernel must never keep the interpreter alive
        self.thread = threading.Thread(target=self._run, args=(prog,), daemon=True)

    def _run(self, prog: Fd) -> None:
        try:
            self.result = run(prog)  # ctypes drops the GIL for the syscall
        except BaseException as e:  # noqa: B902 - reported by release()
            self.error = e

    def start(self, timeout: float) -> None:
        """Run the program; return once it faulted on the page."""
        self.thread.start()
        if self.page.wait_fault(timeout) is None:
            self.abort()
            raise TimeoutError(f"the program did not fault on the userfaultfd page within "
                               f"{timeout} s (result {self.result}, error {self.error})")

    def release(self, timeout: float) -> RunResult:
        """Resolve the fault; wait for the program to finish and return its result."""
        self.page.resolve(u64(0x4242))
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.abort()
            raise TimeoutError(f"the program did not finish within {timeout} s of the "
                               "fault being resolved")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def abort(self) -> None:
        # Closing the userfaultfd wakes the faulting task (copy_from_user fails).
        self.page.close()
        self.thread.join(10)
