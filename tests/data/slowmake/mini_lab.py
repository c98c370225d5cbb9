"""The lab in miniature, for tests/test_ops.py: make streams in a background thread
while the main thread waits for a signal; SIGTERM ends the children, as the lab does.
Usage: mini_lab.py MAKEFILE_DIR PIDS_DIR LOG"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from harness.ops import Ops, terminate_children


def say(line: str) -> None:
    sys.stdout.write(f"{line}\n")  # one write: two threads print
    sys.stdout.flush()


def main() -> None:
    src, pids, log = sys.argv[1:4]
    argv = ["make", "-C", src, f"PIDS={pids}", "SLEEP=60"]
    builder = threading.Thread(
        target=lambda: say(f"make exited {Ops(verbose=False).stream(argv, Path(log))}"),
        daemon=True)

    def on_term(signum: int, frame: FrameType | None) -> None:
        say(f"terminated {' '.join(map(str, terminate_children(grace=2.0)))}")
        builder.join(5.0)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    builder.start()
    while True:
        signal.pause()


if __name__ == "__main__":
    main()
