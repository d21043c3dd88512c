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
