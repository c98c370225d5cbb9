"""`./lab scheduler` and `./lab worker`: the two long-running processes of a lab spread
over machines. A worker serves runs with its own workdir and caches, and declares what
its host can do (worker.capabilities); the scheduler is Dask's own."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path

from harness.config import load_arches
from harness.engine import check_address, security
from harness.errors import UserError
from harness.guest import stop_all
from harness.ops import EVERY_RUN, mark_called_off
from harness.model import Verdict
from harness.worker import capabilities, set_home

STOP_S = 10  # seconds a stopping worker gives Dask to say goodbye to the scheduler


def serve_worker(scheduler: str, workdir: Path, build_slots: int, guest_slots: int,
                 name: str, insecure: bool) -> Verdict:
    """Serve scheduler until it goes away or the worker is stopped (Ctrl-C, SIGTERM:
    its makes and QEMUs go down with it)."""
    from distributed import Worker
    check_address(scheduler, insecure)
    if build_slots < 0 or guest_slots < 0 or build_slots + guest_slots == 0:
        raise UserError(f"--build-slots {build_slots} --guest-slots {guest_slots}: "
                        "expected counts >= 0, not both 0")
    workdir.mkdir(parents=True, exist_ok=True)
    set_home(workdir)
    resources = capabilities(load_arches(), build_slots, guest_slots, workdir)
    name = name or socket.gethostname()
    logging.getLogger("distributed").setLevel(logging.WARNING)

    async def serve() -> bool:
        told_to_stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, told_to_stop.set)
        w = await Worker(scheduler, nthreads=build_slots + guest_slots, name=name,
                         resources=resources, security=security(scheduler),
                         local_directory=str(workdir / "dask-worker"))
        try:
            told = ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()))
            print(f"worker {name}: {w.address} serving {scheduler}; workdir {workdir}; "
                  f"{told}", flush=True)
            stop = asyncio.create_task(told_to_stop.wait())
            await asyncio.wait([stop, asyncio.create_task(w.finished())],
                               return_when=asyncio.FIRST_COMPLETED)
            return told_to_stop.is_set()
        finally:
            # the tasks' threads may be deep in a guest or a make: end what they run
            # (they see it gone and return), and leave without waiting for them
            mark_called_off(EVERY_RUN)
            await asyncio.to_thread(stop_all)
            await w.close(timeout=STOP_S, executor_wait=False)
    if asyncio.run(serve()):
        print(f"worker {name}: stopped", flush=True)
    return Verdict.OK


def serve_scheduler(host: str, port: int, tls: bool, insecure: bool) -> Verdict:
    """A Dask scheduler on host:port; plain TCP only on loopback unless --insecure."""
    from distributed import Scheduler
    address = f"{'tls' if tls else 'tcp'}://{host}:{port}"
    check_address(address, insecure, "--host")
    logging.getLogger("distributed").setLevel(logging.WARNING)

    async def serve() -> None:
        async with Scheduler(host=host, port=port, protocol="tls" if tls else "tcp",
                             security=security(address), dashboard=False) as s:
            print(f"scheduler: {s.address}", flush=True)
            await s.finished()
    asyncio.run(serve())
    return Verdict.OK
