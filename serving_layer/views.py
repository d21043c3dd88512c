"""Writes of the batch and realtime views (cassandra-driver, prepared statements, concurrent).

Rows are absolute values upserted by key, so writing the same rows again is a no-op in effect:
a re-run batch period or a replayed micro-batch leaves the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

BATCH_TABLE = "batch_stats"
SPEED_TABLE = "speed_stats"
PERIODS_TABLE = "batch_periods"
LATE_TABLE = "speed_late_events"
_CONCURRENCY = 64


def bucket_of(granularity: str, period_start: datetime) -> str:
    """The partition bucket: the UTC day for hourly rows, the UTC month for daily rows."""
    return f"{period_start:%Y-%m-%d}" if granularity == "hour" else f"{period_start:%Y-%m}"


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stats_params(row: Mapping, extra: object) -> tuple:
    start = as_utc(row["period_start"])
    sketch = row["users_sketch"]
    return (
        row["dimension"], row["granularity"], bucket_of(row["granularity"], start), start,
        row["dim_id"], int(row["views"]), int(row["clicks"]), int(row["distinct_users"]),
        bytes(sketch) if sketch is not None else None, extra,
    )


def _run(session: Session, cql: str, params: Iterable[tuple]) -> int:
    statement = session.prepare(cql)
    results = execute_concurrent_with_args(
        session, statement, params, concurrency=_CONCURRENCY, raise_on_first_error=True
    )
    return len(results)


def write_batch_rows(session: Session, rows: Iterable[Mapping], run_id: str) -> int:
    """Upsert exact batch rows; returns how many were written."""
    cql = (
        f"INSERT INTO {BATCH_TABLE} (dimension, granularity, bucket, period_start, dim_id,"
        " views, clicks, distinct_users, users_sketch, run_id) VALUES (?,?,?,?,?,?,?,?,?,?)"
    )
    return _run(session, cql, (_stats_params(r, run_id) for r in rows))


def write_speed_rows(session: Session, rows: Iterable[Mapping]) -> int:
    """Upsert realtime rows (absolute values of the stream's running aggregates)."""
    now = datetime.now(UTC)
    cql = (
        f"INSERT INTO {SPEED_TABLE} (dimension, granularity, bucket, period_start, dim_id,"
        " views, clicks, distinct_users, users_sketch, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
    )
    return _run(session, cql, (_stats_params(r, now) for r in rows))


def write_late_events(session: Session, batch_key: str, hours: Mapping[str, int]) -> int:
    """Upsert one micro-batch's late events per hour (ISO-8601 hour -> events)."""
    now = datetime.now(UTC)
    cql = (f"INSERT INTO {LATE_TABLE} (bucket, period_start, batch_key, events, counted_at)"
           " VALUES (?,?,?,?,?)")
    params = []
    for hour, events in hours.items():
        start = as_utc(datetime.fromisoformat(hour))
        params.append((bucket_of("hour", start), start, batch_key, int(events), now))
    return _run(session, cql, params)


def mark_periods_done(session: Session, periods: Iterable[Mapping]) -> int:
    """Record finished batch periods: granularity, period_start, run_id, input_events,
    output_rows, seconds. A period is exact for the serving layer once it is here."""
    now = datetime.now(UTC)
    cql = (
        f"INSERT INTO {PERIODS_TABLE} (granularity, bucket, period_start, run_id, input_events,"
        " output_rows, seconds, completed_at) VALUES (?,?,?,?,?,?,?,?)"
    )
    params = (
        (p["granularity"], bucket_of(p["granularity"], as_utc(p["period_start"])),
         as_utc(p["period_start"]), p["run_id"], int(p["input_events"]), int(p["output_rows"]),
         float(p["seconds"]), now)
        for p in periods
    )
    return _run(session, cql, params)


# ------------------------------------------------- orchestration: periods, reconciliation, expiry
RECONCILIATION_TABLE = "reconciliation"
_RECONCILIATION_COLUMNS = (
    "granularity", "bucket", "period_start", "batch_events", "batch_views", "batch_clicks",
    "speed_rows", "speed_views", "speed_clicks", "views_diff", "clicks_diff", "views_rel_diff",
    "clicks_rel_diff", "users_exact", "users_estimate", "users_rel_error", "batch_run_id",
    "run_id", "checked_at",
)


def read_period(session: Session, granularity: str, period_start: datetime):
    """The ``batch_periods`` row of one period, or None when it is not recorded (not exact)."""
    start = as_utc(period_start)
    return session.execute(
        f"SELECT * FROM {PERIODS_TABLE} WHERE granularity=%s AND bucket=%s AND period_start=%s",
        (granularity, bucket_of(granularity, start), start),
    ).one()


def recorded_periods(
    session: Session, granularity: str, starts: Iterable[datetime]
) -> set[datetime]:
    """Which of the given period starts are recorded in ``batch_periods`` (aware UTC)."""
    wanted = {as_utc(s) for s in starts}
    found: set[datetime] = set()
    for bucket in sorted({bucket_of(granularity, s) for s in wanted}):
        rows = session.execute(
            f"SELECT period_start FROM {PERIODS_TABLE} WHERE granularity=%s AND bucket=%s",
            (granularity, bucket),
        )
        found |= {as_utc(r.period_start) for r in rows} & wanted
    return found


def read_placement_rows(
    session: Session, layer: str, granularity: str, period_start: datetime,
    whole_day: bool = False,
) -> list:
    """Placement-dimension rows of ``batch_stats`` / ``speed_stats`` (``layer`` batch or speed)
    for one period, or, with ``whole_day``, all hourly rows of the period's UTC day."""
    table = {"batch": BATCH_TABLE, "speed": SPEED_TABLE}[layer]
    start = as_utc(period_start)
    cql = (f"SELECT dim_id, period_start, views, clicks, distinct_users, users_sketch FROM {table}"
           " WHERE dimension='placement' AND granularity=%s AND bucket=%s")
    if whole_day:
        return list(session.execute(cql, (granularity, f"{start:%Y-%m-%d}")))
    return list(session.execute(cql + " AND period_start=%s",
                                (granularity, bucket_of(granularity, start), start)))


def write_reconciliation(session: Session, record: Mapping) -> None:
    """Upsert one reconciliation row (keyed by granularity, bucket, period_start)."""
    cql = (f"INSERT INTO {RECONCILIATION_TABLE} ({', '.join(_RECONCILIATION_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(_RECONCILIATION_COLUMNS))})")
    values = dict(record)
    values["period_start"] = as_utc(values["period_start"])
    values["bucket"] = bucket_of(values["granularity"], values["period_start"])
    session.execute(session.prepare(cql), tuple(values.get(c) for c in _RECONCILIATION_COLUMNS))


def read_reconciliation(
    session: Session, granularity: str, period_start: datetime
) -> dict | None:
    """The reconciliation row of one period as a dict, or None."""
    start = as_utc(period_start)
    row = session.execute(
        f"SELECT * FROM {RECONCILIATION_TABLE} WHERE granularity=%s AND bucket=%s"
        " AND period_start=%s", (granularity, bucket_of(granularity, start), start),
    ).one()
    return row._asdict() if row is not None else None


def delete_speed_day(session: Session, day: str, dimensions: Iterable[str]) -> int:
    """Delete a UTC day's hourly realtime rows: one partition delete per dimension (bucket =
    the day, ``YYYY-MM-DD``). Needs MODIFY (the writer role). Returns the partitions deleted."""
    statement = session.prepare(
        f"DELETE FROM {SPEED_TABLE} WHERE dimension=? AND granularity='hour' AND bucket=?")
    dims = list(dimensions)
    for dim in dims:
        session.execute(statement, (dim, day))
    return len(dims)
