"""The history database: nights recorded whole, a night classified against the one
before it, unstable tests and their flips, migrations; on SQLite and on a real
PostgreSQL server the test starts on loopback in a temporary directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from harness import history
from harness.errors import UserError
from harness.history import Change, Seen, SigChange, Result

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def r(test: str, status: str, retry: str | None = None, sha: str = "h1") -> Result:
    return Result(sha, "x86_64", "base", test, status, 1.0, "", retry)


def test_a_night_is_classified_against_the_one_before() -> None:
    before = [r("a", "pass"), r("b", "pass"), r("c", "fail"), r("d", "fail"), r("e", "pass"),
              r("f", "skip")]
    now = [r("a", "pass"), r("b", "fail", retry="fail"), r("c", "fail"), r("d", "pass"),
           r("f", "error", retry="pass"), r("g", "pass")]
    got = {c.key[0]: c.change for c in history.classify(before, now)}
    assert got == {"b": Change.REGRESSION, "c": Change.STILL_FAILING, "d": Change.FIXED,
                   "e": Change.MISSING, "f": Change.UNSTABLE, "g": Change.NEW}


def test_a_flake_of_last_night_is_not_a_known_failure_tonight() -> None:
    flaked = [r("a", "fail", retry="pass"), r("b", "fail", retry="pass")]
    now = [r("a", "fail"), r("b", "pass")]
    # failing again: a regression until its own retry says otherwise; passing: no news
    assert [(c.key[0], c.change) for c in history.classify(flaked, now)] == [
        ("a", Change.REGRESSION)]
    now = [r("a", "fail", retry="pass"), r("b", "pass")]
    assert [(c.key[0], c.change) for c in history.classify(flaked, now)] == [
        ("a", Change.UNSTABLE)]


def test_a_regression_without_a_retry_yet_is_a_regression() -> None:
    [got] = history.classify([r("a", "pass")], [r("a", "fail")])
    assert (got.change, got.before, got.now) == (Change.REGRESSION, "pass", "fail")


def test_report_signatures_are_new_still_seen_or_gone_and_expected_ones_do_not_count() -> None:
    def s(sig: str, expected: bool = False) -> Seen:
        return Seen("h", "x86_64", "base", sig, None, expected)
    got = history.classify_signatures([s("KASAN: a"), s("WARNING in b"), s("BUG: x", True)],
                                      [s("WARNING in b"), s("KASAN: c"), s("BUG: y", True)])
    assert got == [("KASAN: a", SigChange.GONE), ("KASAN: c", SigChange.NEW),
                   ("WARNING in b", SigChange.STILL)]


def check_history(url: str) -> None:
    engine = history.open_db(url)
    first = history.record(engine, "lab", "bpf-next/master", "h1", "h1", [r("a", "pass")],
                           [Seen("h1", "x86_64", "base", "KASAN: x", "a", True)], "ok")
    second = history.record(engine, "lab", "bpf-next/master", "h2", "h2",
                            [r("a", "fail", retry="pass", sha="h2")], [], "unstable")
    history.record(engine, "other", "main", "z", "z", [], [], "ok")
    nights = history.nights_of(engine, "lab")
    assert [(n.id, n.head, n.verdict) for n in nights] == [(first.id, "h1", "ok"),
                                                          (second.id, "h2", "unstable")]
    assert history.results_of(engine, first.id) == [r("a", "pass")]
    assert history.seen_of(engine, first.id)[0].expected is True
    # pass, then fail, then pass on the retry: two flips
    assert history.flips(engine, "lab", ("a", "x86_64", "base")) == 2
    assert history.ever_unstable(engine, "lab", ("a", "x86_64", "base"))
    assert not history.ever_unstable(engine, "lab", ("b", "x86_64", "base"))
    # opening again migrates nothing and keeps everything
    assert len(history.nights_of(history.open_db(url), "lab")) == 2


def test_sqlite_keeps_nights_results_and_signatures(tmp_path: Path) -> None:
    check_history(history.default_url(tmp_path))


def test_a_database_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = history.default_url(tmp_path)
    engine = history.open_db(url)
    with engine.begin() as conn:
        conn.execute(history.schema.update().values(version=len(history.MIGRATIONS) + 1))
    with pytest.raises(UserError, match="newer than this lab's"):
        history.open_db(url)


def test_a_database_that_cannot_be_reached_is_one_line_without_the_password() -> None:
    with pytest.raises(UserError) as err:
        history.open_db("postgresql+pg8000://lab:secret@127.0.0.1:1/nights")
    assert "cannot be opened" in str(err.value) and "secret" not in str(err.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL server of Debian's package, in tmp_path, on a loopback port, as an
    unprivileged user (the server refuses root); stopped after the test."""
    if not (PG_BIN / "pg_ctl").exists():
        pytest.fail(f"{PG_BIN / 'pg_ctl'} missing: ./lab setup installs postgresql-15")
    # pytest's tmp_path is root's alone (0700): the server's user gets a directory of
    # its own in /tmp, removed after
    data, port = Path(tempfile.mkdtemp(prefix="bpflab-pg-")), _free_port()
    user = "nobody"
    data.chmod(0o700)
    shutil.chown(data, user)
    env = {**os.environ, "LC_ALL": "C"}

    def as_user(*argv: str) -> None:
        done = subprocess.run(["runuser", "-u", user, "--", *argv], env=env,
                              capture_output=True, text=True, cwd="/")
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
    as_user(str(PG_BIN / "initdb"), "-D", str(data), "-U", "lab", "--auth=trust")
    as_user(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l",
            str(data / "log"), "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start")
    try:
        url = f"postgresql+pg8000://lab@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                sa.create_engine(url).connect().close()
                break
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        as_user(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop")
        shutil.rmtree(data)


def test_postgresql_keeps_nights_results_and_signatures(postgres: str) -> None:
    check_history(postgres)


def test_a_database_of_the_first_schema_is_migrated_and_keeps_its_nights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = history.default_url(tmp_path)
    monkeypatch.setattr(history, "MIGRATIONS", history.MIGRATIONS[:1])
    old = history.record(history.open_db(url), "lab", "m", "h1", "h1", [r("a", "pass")], [],
                         "ok")
    monkeypatch.undo()
    engine = history.open_db(url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(history.schema.c.version)).scalar_one() == \
            len(history.MIGRATIONS)
    assert history.results_of(engine, old.id) == [r("a", "pass")]
    found = history.Culprit("a", "x86_64", "base", "c" * 40, "bpf: x", "verified", "high")
    history.record_culprits(engine, old.id, [found])
    assert history.culprits_of(engine, old.id) == [found]
