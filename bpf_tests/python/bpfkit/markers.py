"""The kernel marker lines the suite writes to /dev/kmsg around each test (see conftest)."""

from __future__ import annotations

import os
import warnings

KMSG_LEVEL = 5  # KERN_NOTICE: on a console with the default loglevel 7, not with quiet
MAX_NODEID = 900  # a kmsg record holds ~1 KiB


def escape(nodeid: str) -> str:
    """Printable ASCII except space kept; everything else as \\xNN (or \\uNNNN)."""
    out = []
    for c in nodeid:
        if "!" <= c <= "~":
            out.append(c)
        elif ord(c) < 256:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)[:MAX_NODEID]


def kmsg_line(event: str, nodeid: str, outcome: str = "") -> bytes:
    """b"<5>bpflab: begin <nodeid>\\n" or b"<5>bpflab: end <nodeid> <outcome>\\n"."""
    if event not in ("begin", "end") or (event == "end") != bool(outcome):
        raise ValueError(f"bad marker: {event} {outcome!r}")
    tail = f" {outcome}" if outcome else ""
    return f"<{KMSG_LEVEL}>bpflab: {event} {escape(nodeid)}{tail}\n".encode("ascii")


def write_kmsg(line: bytes, path: str = "/dev/kmsg") -> None:
    # A fresh open per line: /dev/kmsg rate-limits writes per open file.
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:
        warnings.warn(f"cannot write kernel marker to {path}: {e}")
