"""The lab's memory across nights: each night's head, its test outcomes per (test,
arch, variant) and its kernel report signatures, and the classification of a night
against the one before it. SQLite under the workdir by default; a PostgreSQL URL
when several hosts share one history. SQLAlchemy Core; the schema's versions are
this module's own migrations, applied in order and recorded in the database."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from harness.errors import UserError
from harness.model import Status

BAD = (Status.FAIL.value, Status.ERROR.value)

meta = sa.MetaData()
schema = sa.Table("schema_version", meta, sa.Column("version", sa.Integer, nullable=False))
nights = sa.Table(
    "nights", meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("lab", sa.String(200), nullable=False),  # the lab's name: one history each
    sa.Column("branch", sa.String(200), nullable=False),
    sa.Column("head", sa.String(64), nullable=False),
    sa.Column("head_name", sa.String(200), nullable=False),
    sa.Column("started", sa.String(32), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False))


def _of_a_target() -> list[sa.Column[Any]]:
    """The columns that place a row: its night, and the target (commit, arch, variant)."""
    return [sa.Column("night", sa.Integer, sa.ForeignKey("nights.id"), nullable=False,
                      index=True),
            sa.Column("sha", sa.String(64), nullable=False),
            sa.Column("arch", sa.String(32), nullable=False),
            sa.Column("variant", sa.String(64), nullable=False)]


outcomes = sa.Table(
    "outcomes", meta, *_of_a_target(),
    sa.Column("test", sa.String(400), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),
    sa.Column("duration", sa.Float, nullable=False, default=0.0),
    sa.Column("message", sa.Text, nullable=False, default=""),
    # the retry on a fresh boot of a test that regressed: pass means unstable
    sa.Column("retry", sa.String(8), nullable=True))
signatures = sa.Table(
    "signatures", meta, *_of_a_target(),
    sa.Column("signature", sa.String(400), nullable=False),
    sa.Column("test", sa.String(400), nullable=True),
    sa.Column("expected", sa.Boolean, nullable=False))


culprits = sa.Table(  # schema 2: what each confirmed regression was bisected to
    "culprits", meta,
    sa.Column("night", sa.Integer, sa.ForeignKey("nights.id"), nullable=False, index=True),
    sa.Column("test", sa.String(400), nullable=False),
    sa.Column("arch", sa.String(32), nullable=False),
    sa.Column("variant", sa.String(64), nullable=False),
    sa.Column("sha", sa.String(64), nullable=False),  # "" when none was singled out
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("verification", sa.Text, nullable=False),
    sa.Column("confidence", sa.String(16), nullable=False))


def _v1(conn: Connection) -> None:
    for table in (nights, outcomes, signatures):
        table.create(conn)


def _v2(conn: Connection) -> None:
    culprits.create(conn)


# Migrations: version n is reached by MIGRATIONS[n - 1]; append, never edit.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_v1, _v2)


def default_url(workdir: Path) -> str:
    """SQLite in the workdir (made if missing)."""
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{workdir / 'history.sqlite3'}"


def open_db(url: str) -> Engine:
    """The history at url, migrated to this code's schema. A database of a newer
    schema, or one that cannot be reached, is the user's to fix: one line."""
    try:
        engine = sa.create_engine(url, future=True)
        with engine.begin() as conn:
            migrate(conn)
    except sa.exc.ArgumentError as exc:
        raise UserError(f"history database {url!r}: not a database URL ({exc})") from exc
    except sa.exc.DBAPIError as exc:  # refused, unknown host, bad credentials
        why = (str(exc.orig).strip().splitlines() or ["no reason given"])[0]
        raise UserError(f"history database {_safe(url)}: cannot be opened: {why}") from exc
    return engine


def _safe(url: str) -> str:
    """The URL without its password."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


def migrate(conn: Connection) -> int:
    if not sa.inspect(conn).has_table("schema_version"):
        schema.create(conn)
        conn.execute(schema.insert().values(version=0))
    version = int(conn.execute(sa.select(schema.c.version)).scalar_one())
    if version > len(MIGRATIONS):
        raise UserError(f"history database of schema {version}, newer than this lab's "
                        f"{len(MIGRATIONS)}: update the lab")
    for step in MIGRATIONS[version:]:
        step(conn)
        version += 1
        conn.execute(schema.update().values(version=version))
    return version


@dataclass(frozen=True)
class Result:
    sha: str
    arch: str
    variant: str
    test: str
    status: str  # Status value
    duration: float = 0.0
    message: str = ""
    retry: str | None = None


@dataclass(frozen=True)
class Seen:
    sha: str
    arch: str
    variant: str
    signature: str
    test: str | None
    expected: bool


@dataclass(frozen=True)
class Night:
    id: int
    lab: str
    branch: str
    head: str
    head_name: str
    started: str
    verdict: str


def record(engine: Engine, lab: str, branch: str, head: str, head_name: str,
           results: Iterable[Result], seen: Iterable[Seen], verdict: str) -> Night:
    """One night, in one transaction: a crash leaves the night out, never half in."""
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    with engine.begin() as conn:
        night = conn.execute(nights.insert().values(
            lab=lab, branch=branch, head=head, head_name=head_name, started=started,
            verdict=verdict)).inserted_primary_key[0]
        rows = [dict(night=night, **r.__dict__) for r in results]
        if rows:
            conn.execute(outcomes.insert(), rows)
        sigs = [dict(night=night, **s.__dict__) for s in seen]
        if sigs:
            conn.execute(signatures.insert(), sigs)
    return Night(night, lab, branch, head, head_name, started, verdict)


def nights_of(engine: Engine, lab: str, branch: str | None = None) -> list[Night]:
    """The lab's nights, oldest first."""
    q = sa.select(nights).where(nights.c.lab == lab).order_by(nights.c.id)
    if branch is not None:
        q = q.where(nights.c.branch == branch)
    with engine.connect() as conn:
        return [Night(**row._asdict()) for row in conn.execute(q)]


def _of_night(engine: Engine, table: sa.Table, night: int) -> list[dict[str, Any]]:
    """The table's rows of one night, without the night column."""
    with engine.connect() as conn:
        return [{k: v for k, v in row._asdict().items() if k != "night"}
                for row in conn.execute(sa.select(table).where(table.c.night == night))]


def results_of(engine: Engine, night: int) -> list[Result]:
    return [Result(**row) for row in _of_night(engine, outcomes, night)]


def seen_of(engine: Engine, night: int) -> list[Seen]:
    return [Seen(**row) for row in _of_night(engine, signatures, night)]


class Change(Enum):
    """kci-dev's vocabulary for a test between two nights."""

    REGRESSION = "regression"  # passed (or skipped) last night, fails now, and on retry
    UNSTABLE = "unstable"  # failed now, passed on a fresh boot: flaky, not bisected
    STILL_FAILING = "still failing"
    FIXED = "fixed"
    NEW = "new test"
    MISSING = "missing test"


class SigChange(Enum):
    NEW = "new"
    STILL = "still seen"
    GONE = "gone"


Key = tuple[str, str, str]  # (test, arch, variant)


@dataclass(frozen=True)
class Classified:
    key: Key
    change: Change
    before: str | None  # last night's status
    now: str | None


def classify(before: Iterable[Result], now: Iterable[Result]) -> list[Classified]:
    """Each (test, arch, variant) of the head tonight against last night's head; only
    what changed, or still fails, is listed."""
    old = {(r.test, r.arch, r.variant): r for r in before}
    new = {(r.test, r.arch, r.variant): r for r in now}
    out = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if a is None and b is not None:
            out.append(Classified(key, Change.NEW, None, b.status))
        elif b is None and a is not None:
            out.append(Classified(key, Change.MISSING, a.status, None))
        elif a is not None and b is not None:
            # last night's failure that passed on its retry was a flake, not a known
            # failure: failing again tonight is retried and judged afresh
            was = a.status in BAD and (a.retry is None or a.retry in BAD)
            bad = b.status in BAD
            if bad and was:
                out.append(Classified(key, Change.STILL_FAILING, a.status, b.status))
            elif bad:
                flaky = b.retry is not None and b.retry not in BAD
                out.append(Classified(key, Change.UNSTABLE if flaky else Change.REGRESSION,
                                      a.status, b.status))
            elif was:
                out.append(Classified(key, Change.FIXED, a.status, b.status))
    return out


def classify_signatures(before: Iterable[Seen], now: Iterable[Seen]
                        ) -> list[tuple[str, SigChange]]:
    """Unexpected report signatures tonight against last night: new, still seen, gone."""
    old = {s.signature for s in before if not s.expected}
    new = {s.signature for s in now if not s.expected}
    return sorted([(s, SigChange.NEW) for s in new - old] +
                  [(s, SigChange.STILL) for s in new & old] +
                  [(s, SigChange.GONE) for s in old - new], key=lambda x: (x[1].value, x[0]))


def flips(engine: Engine, lab: str, key: Key) -> int:
    """How often the test changed between pass and fail over the lab's nights, its
    retries counted: an unstable test's record."""
    test, arch, variant = key
    q = (sa.select(outcomes.c.status, outcomes.c.retry).join(nights)
         .where(nights.c.lab == lab, outcomes.c.test == test, outcomes.c.arch == arch,
                outcomes.c.variant == variant, outcomes.c.sha == nights.c.head)
         .order_by(nights.c.id))
    seq: list[bool] = []
    with engine.connect() as conn:
        for status, retry in conn.execute(q):
            seq.append(status in BAD)
            if retry is not None:
                seq.append(retry in BAD)
    return sum(1 for x, y in zip(seq, seq[1:]) if x != y)


def ever_unstable(engine: Engine, lab: str, key: Key) -> bool:
    """Did the test ever fail and then pass on its retry, in any of the lab's nights?"""
    test, arch, variant = key
    q = (sa.select(sa.func.count()).select_from(outcomes.join(nights))
         .where(nights.c.lab == lab, outcomes.c.test == test, outcomes.c.arch == arch,
                outcomes.c.variant == variant, outcomes.c.status.in_(BAD),
                outcomes.c.retry.is_not(None), outcomes.c.retry.not_in(BAD)))
    with engine.connect() as conn:
        return int(conn.execute(q).scalar_one()) > 0


@dataclass(frozen=True)
class Culprit:
    test: str
    arch: str
    variant: str
    sha: str
    subject: str
    verification: str
    confidence: str


def record_culprits(engine: Engine, night: int, found: Iterable[Culprit]) -> None:
    rows = [dict(night=night, **c.__dict__) for c in found]
    if rows:
        with engine.begin() as conn:
            conn.execute(culprits.insert(), rows)


def culprits_of(engine: Engine, night: int) -> list[Culprit]:
    return [Culprit(**row) for row in _of_night(engine, culprits, night)]
