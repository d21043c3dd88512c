"""``adstats batch hourly | daily | range``: exact stats from the master dataset -> batch views.

    read master (both doors, each event once) -> exact_stats (all dimensions, one pass)
      -> upsert batch_stats rows (absolute values) -> record each finished period

An hour with no events writes no stats rows but IS recorded in ``batch_periods`` with
``input_events = 0``: the serving layer tells "zero" (recorded, no rows) from "not computed
yet" (not recorded). Re-running a period rewrites the same rows (idempotent).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import TYPE_CHECKING

from adstats.config import Settings, settings
from batch_layer.master import hours_of_day, master_lock, read_events

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_WRITE_CHUNK = 5000


@dataclass
class BatchReport:
    run_id: str
    hours: list[datetime]
    days: list[date]
    input_events: dict[tuple[str, datetime], int] = field(default_factory=dict)
    rows_written: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        total = sum(v for (g, _), v in self.input_events.items() if g == "hour")
        daily = sum(v for (g, _), v in self.input_events.items() if g == "day")
        return (
            f"batch run {self.run_id}: {len(self.hours)} hour(s), {len(self.days)} day(s); "
            f"events: {total:,} in the hours, {daily:,} in the days; "
            f"{self.rows_written:,} rows upserted in {self.seconds:.1f} s"
        )


def parse_hour(text: str) -> datetime:
    """``2026-01-01T13`` (or any ISO form on a whole hour) -> aware UTC datetime."""
    value = text.strip()
    if len(value) == 13 and value[10] in "T ":
        value += ":00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"not an hour: {text!r} (expected e.g. 2026-01-01T13)") from exc
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    if parsed.minute or parsed.second or parsed.microsecond:
        raise ValueError(f"not a whole hour: {text!r}")
    return parsed


def parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise ValueError(f"not a date: {text!r} (expected e.g. 2026-01-01)") from exc


def plan_range(start: datetime, end: datetime) -> tuple[list[datetime], list[date]]:
    """Hours in [start, end) and every UTC day those hours touch."""
    if end <= start:
        raise ValueError(f"empty range: --to {end:%Y-%m-%dT%H} is not after --from "
                         f"{start:%Y-%m-%dT%H}")
    hours = []
    hour = start
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    days = sorted({h.date() for h in hours})
    return hours, days


@contextmanager
def _released(spark: SparkSession) -> Iterator[None]:
    """Drop what the job cached (hourly cells, the user numbering's checkpoint) when it ends:
    a long-lived session (Airflow worker, the demo, tests) runs many jobs."""
    try:
        yield
    finally:
        spark.catalog.clearCache()


def refuse_unfinished(hours: Iterable[datetime], days: Iterable[date],
                      now: datetime | None = None) -> None:
    """An hour or day that has not ended yet cannot be exact: recording it would show a
    premature "final" number (and hide the speed layer's) until someone re-ran it."""
    now = now or datetime.now(UTC)
    ends = [(f"hour {h:%Y-%m-%dT%H}", h + timedelta(hours=1)) for h in hours]
    ends += [(f"day {d}", datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1))
             for d in days]
    unfinished = [name for name, end in ends if end > now]
    if unfinished:
        raise ValueError(f"{unfinished[0]} has not ended yet (now {now:%Y-%m-%dT%H:%M}Z); "
                         f"{len(unfinished)} unfinished period(s) requested — the batch layer "
                         "only recomputes finished periods")


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    while chunk := list(islice(rows, size)):
        yield chunk


def run_batch(
    hours: Iterable[datetime],
    days: Iterable[date] = (),
    spark: SparkSession | None = None,
    cfg: Settings | None = None,
    quiet: bool = False,
) -> BatchReport:
    """Recompute exact stats of the given hours and days and upsert them into the batch views."""
    cfg = cfg or settings()
    with master_lock(cfg.master_dir):
        return _run_batch(hours, days, spark, cfg, quiet)


def _run_batch(
    hours: Iterable[datetime], days: Iterable[date], spark: SparkSession | None, cfg: Settings,
    quiet: bool,
) -> BatchReport:
    from pyspark.sql import functions as F

    from adstats.spark import spark_session
    from adstats.stats import exact_stats
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import mark_periods_done, write_batch_rows

    hours, days = sorted(set(hours)), sorted(set(days))
    refuse_unfinished(hours, days)
    began = time.monotonic()
    run_id = f"batch-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    report = BatchReport(run_id, hours, days)
    if not quiet:
        print(f"batch {run_id}: {len(hours)} hour(s), {len(days)} day(s)", file=sys.stderr)
    needed = set(hours).union(*(hours_of_day(d) for d in days))
    granularities = [g for g, wanted in (("hour", hours), ("day", days)) if wanted]
    spark = spark or spark_session("adstats-batch", cfg)
    events = read_events(spark, cfg.master_dir, needed)

    counts: dict[tuple[str, datetime], int] = defaultdict(int)
    rows_per_period: dict[tuple[str, datetime], int] = defaultdict(int)
    with writer_session(cfg) as session, _released(spark):
        if events is not None:
            stats = exact_stats(events, granularities)
            hour_starts = [h.replace(tzinfo=None) for h in hours]  # Spark gives naive UTC
            stats = stats.where((F.col("granularity") == "day")
                                | F.col("period_start").isin(hour_starts))
            for chunk in _chunks(stats.toLocalIterator(), _WRITE_CHUNK):
                rows = [r.asDict() for r in chunk]
                report.rows_written += write_batch_rows(session, rows, run_id)
                for r in rows:
                    key = (r["granularity"], r["period_start"].replace(tzinfo=UTC))
                    rows_per_period[key] += 1
                    # Every event has exactly one placement: its rows count each event once.
                    if r["dimension"] == "placement":
                        counts[key] += r["views"] + r["clicks"]
        seconds = time.monotonic() - began
        periods = [("hour", h) for h in hours] + [
            ("day", datetime(d.year, d.month, d.day, tzinfo=UTC)) for d in days]
        mark_periods_done(session, (
            {"granularity": g, "period_start": p, "run_id": run_id,
             "input_events": counts.get((g, p), 0),
             "output_rows": rows_per_period.get((g, p), 0), "seconds": seconds}
            for g, p in periods
        ))
    report.input_events = {p: counts.get(p, 0) for p in periods}
    report.seconds = time.monotonic() - began
    return report
