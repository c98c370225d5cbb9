"""SSH into a guest with paramiko: pinned host key, per-command timeouts, SFTP.

Trust is pinned, never learned: the guest's host key comes from the rootfs cache
and anything else is rejected (RejectPolicy, no AutoAdd)."""

from __future__ import annotations

import base64
import logging
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import paramiko

# paramiko logs every failed banner read as an error with a traceback; the retries
# here expect those, and the caller gets a clear SSHError instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())

from harness.errors import LabError

POLL = 0.02  # s between looks at a channel: short enough to be unnoticeable
NETWORK_ERRORS = (paramiko.SSHException, EOFError, OSError, socket.timeout)


class SSHError(LabError):
    """The guest could not be reached or dropped the connection. `partial` holds what
    a command had printed before that, so no result already reported is lost."""

    partial: "CommandResult | None" = None


class GuestDropped(SSHError):
    """The connection died mid-command: the guest crashed, hung or was killed."""


class HostKeyMismatch(SSHError):
    """The guest presented a host key other than the pinned one: never retried."""


class CommandTimeout(SSHError):
    """A command ran longer than its timeout; the guest may still be alive."""


class GuestDied(SSHError):
    """The watch said the guest is gone or wedged (a panic on the console, QEMU
    exited, a test past its time) while a command ran."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_status: int
    stdout: str
    stderr: str
    seconds: float
    truncated: int = 0  # bytes of output dropped past the limit


    @property
    def ok(self) -> bool:
        return self.exit_status == 0


OUTPUT_LIMIT = 16 << 20  # bytes kept per stream of one command (limits.output_bytes)
# Called on every poll while a command runs; a reason (str) ends the command.
Watch = Callable[[], "str | None"]


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    key_file: Path
    host_key_file: Path  # the guest's public host key, 'ssh-ed25519 AAAA... comment'


def pinned_host_keys(endpoint: Endpoint) -> paramiko.HostKeys:
    """A known_hosts holding exactly the guest's key, under the name paramiko looks up."""
    kind, data = endpoint.host_key_file.read_text().split()[:2]
    name = endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"
    keys = paramiko.HostKeys()
    keys.add(name, kind, paramiko.PKey.from_type_string(kind, base64.b64decode(data)))
    return keys


def command_text(command: str | Sequence[str]) -> str:
    """A list is quoted word by word; a string is passed to the guest's shell as is."""
    return command if isinstance(command, str) else shlex.join(command)


class GuestSSH:
    """One SSH connection to a guest."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.client: paramiko.SSHClient | None = None

    def connect(self, timeout: float = 5.0) -> None:
        """One attempt; raises SSHError when the guest does not (yet) answer."""
        client = paramiko.SSHClient()
        for name, entry in pinned_host_keys(self.endpoint).items():
            for kind, key in entry.items():
                client.get_host_keys().add(name, kind, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.endpoint.key_file))
        try:
            client.connect(self.endpoint.host, self.endpoint.port, self.endpoint.user,
                           pkey=pkey, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout, look_for_keys=False, allow_agent=False)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(f"guest host key does not match the pinned one: {exc}") \
                from exc
        except NETWORK_ERRORS as exc:
            client.close()
            if "known_hosts" in str(exc):  # RejectPolicy: a key of a type not pinned
                raise HostKeyMismatch(f"guest host key is not the pinned one: {exc}") from exc
            raise SSHError(f"ssh {self._where()}: {exc or type(exc).__name__}") from exc
        self.client = client

    def connect_until(self, deadline: float, keep_trying: Callable[[], bool],
                      attempt_timeout: float = 3.0, pause: float = 0.25) -> float:
        """Retry connect() until it works, monotonic `deadline` passes or keep_trying()
        says the guest is gone. Returns the seconds spent; raises the last SSHError."""
        started = time.monotonic()
        last: SSHError | None = None
        while time.monotonic() < deadline and keep_trying():
            try:
                self.connect(min(attempt_timeout, max(0.5, deadline - time.monotonic())))
                return time.monotonic() - started
            except HostKeyMismatch:
                raise
            except SSHError as exc:
                last = exc
            time.sleep(pause)
        raise last or SSHError(f"ssh {self._where()}: gave up before the first attempt")

    def _where(self) -> str:
        return f"{self.endpoint.user}@{self.endpoint.host}:{self.endpoint.port}"

    def _alive(self) -> bool:
        transport = self.client.get_transport() if self.client else None
        return transport is not None and transport.is_active()

    def _transport(self) -> paramiko.Transport:
        transport = self.client.get_transport() if self.client else None
        if transport is None or not transport.is_active():
            raise GuestDropped(f"ssh {self._where()}: not connected")
        return transport

    def run(self, command: str | Sequence[str], timeout: float = 60.0,
            check: bool = False, watch: Watch | None = None,
            limit: int = OUTPUT_LIMIT) -> CommandResult:
        """Run a command, draining stdout and stderr as they come (a full pipe must
        never stall the guest), then read the exit status. Output past `limit` bytes
        per stream is counted, not kept; `watch` may end the command early."""
        text = command_text(command)
        started = time.monotonic()
        sink = _Sink(limit)
        try:
            chan = self._transport().open_session(timeout=timeout)
            chan.exec_command(text)
            chan.shutdown_write()  # stdin at EOF: nothing waits for input
            _drain(chan, started + timeout, text, sink, watch)
            status = chan.recv_exit_status()
            if status == -1 and not self._alive():
                # paramiko reports -1 when the transport died: no real exit status
                raise GuestDropped(f"ssh {self._where()}: connection lost during {text!r}")
            chan.close()
        except SSHError as exc:
            exc.partial = sink.result(text, -1, started)
            raise
        except NETWORK_ERRORS as exc:
            err = GuestDropped(f"ssh {self._where()}: connection lost during "
                               f"{text!r}: {exc or type(exc).__name__}")
            err.partial = sink.result(text, -1, started)
            raise err from exc
        result = sink.result(text, status, started)
        if check and not result.ok:
            raise SSHError(f"{text!r} exited {status}: {result.stderr.strip()[-500:]}")
        return result

    def get(self, remote: str, local: Path) -> None:
        self._sftp(lambda sftp: sftp.get(remote, str(local)), f"get {remote}")

    def put(self, local: Path, remote: str) -> None:
        self._sftp(lambda sftp: sftp.put(str(local), remote), f"put {remote}")

    def _sftp(self, action: Callable[[paramiko.SFTPClient], object], what: str) -> None:
        try:
            sftp = paramiko.SFTPClient.from_transport(self._transport())
            if sftp is None:
                raise SSHError(f"sftp {self._where()}: no SFTP channel")
            with sftp:
                action(sftp)
        except FileNotFoundError as exc:
            raise SSHError(f"sftp {what}: no such file") from exc
        except NETWORK_ERRORS as exc:
            raise GuestDropped(f"sftp {what} on {self._where()}: {exc}") from exc

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class _Sink:
    """A command's output, kept up to a limit per stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out, self.err = bytearray(), bytearray()
        self.dropped = 0

    def add(self, buf: bytearray, data: bytes) -> None:
        room = max(0, self.limit - len(buf))
        buf += data[:room]
        self.dropped += len(data) - min(room, len(data))

    def result(self, text: str, status: int, started: float) -> CommandResult:
        return CommandResult(text, status, self.out.decode(errors="replace"),
                             self.err.decode(errors="replace"), time.monotonic() - started,
                             self.dropped)


def _drain(chan: paramiko.Channel, deadline: float, text: str, sink: _Sink,
           watch: Watch | None) -> None:
    while True:
        busy = False
        while chan.recv_ready():
            sink.add(sink.out, chan.recv(65536))
            busy = True
        while chan.recv_stderr_ready():
            sink.add(sink.err, chan.recv_stderr(65536))
            busy = True
        if chan.exit_status_ready() and (chan.eof_received or chan.closed) \
                and not chan.recv_ready() and not chan.recv_stderr_ready():
            return
        transport = chan.get_transport()
        if chan.closed or transport is None or not transport.is_active():
            raise GuestDropped(f"connection lost during {text!r} "
                               f"(after {len(sink.out)} bytes of output)")
        why = watch() if watch else None
        if why:
            chan.close()
            raise GuestDied(why)
        if time.monotonic() > deadline:
            chan.close()
            raise CommandTimeout(f"{text!r} still running at its timeout")
        if not busy:
            time.sleep(POLL)
