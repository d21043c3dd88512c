"""What the Airflow DAGs do, as plain functions (``dags/`` only schedules and calls them).

Hourly (``dags/ad_stats_hourly.py``), for the hour ``[H, H+1h)``::

    hour_completeness -> ingest_hour -> check_hour -> recompute_hour -> reconcile
      (sensor)           landing file   gates: input   run_batch: exact    batch vs speed
                         -> master      > 0, quarant.  rows, THEN the      -> reconciliation
                                        share < max    batch_periods row   (never un-exacts)

The gates run BEFORE the recompute because ``run_batch`` records the hour in ``batch_periods``
(the serving layer's "this hour is exact") as its last step: so an hour is counted exact only
after its checks passed, and a failed gate leaves the hour served from the speed layer.
Reconciliation compares the speed layer against the exact batch figures; a difference is the
speed layer's error, so it is recorded (and may fail the run when
``ADSTATS_RECONCILE_MAX_REL_DIFF`` is set) but never retracts the exact hour.

Daily (``dags/ad_stats_daily.py``), for the UTC day D::

    day_is_ready (all 24 hours of D in batch_periods) -> recompute_day -> reconcile
      -> expire_speed_rows (delete D's speed_stats partitions, now superseded)

Nothing here imports Spark, Cassandra or Airflow at module level: the DAG files import this
module while the scheduler parses them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adstats.config import Settings, settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("adstats.orchestration")

# Environment knobs (all optional).
LANDING_ENV = "ADSTATS_LANDING_DIR"                 # default: settings().landing_dir
READY_ENV = "ADSTATS_HOUR_READY"                    # auto | files | stream | both
STREAM_GRACE_ENV = "ADSTATS_STREAM_GRACE_MINUTES"   # default 10
ALLOW_EMPTY_ENV = "ADSTATS_ALLOW_EMPTY_HOURS"       # default false
EMPTY_WAIT_ENV = "ADSTATS_EMPTY_HOUR_WAIT_MINUTES"  # default 60 (only with allow-empty)
MAX_QUARANTINE_ENV = "ADSTATS_MAX_QUARANTINE_SHARE"  # default 0.05
RECONCILE_MAX_ENV = "ADSTATS_RECONCILE_MAX_REL_DIFF"  # default: unset (record only)

READY_MODES = ("auto", "files", "stream", "both")
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
_TRUE = {"1", "true", "yes", "on"}


class HourNotReady(RuntimeError):
    """The period's input is not complete (yet)."""


class DataQualityError(RuntimeError):
    """A gate failed: the period is NOT recorded exact; the message says what and for when."""


class ReconciliationError(RuntimeError):
    """Batch and speed differ by more than ``ADSTATS_RECONCILE_MAX_REL_DIFF`` (recorded)."""


# --------------------------------------------------------------------------------- settings
def env_flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    return default if not raw else raw in _TRUE


def env_float(name: str, default: float | None) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc


def landing_dir(cfg: Settings | None = None) -> Path:
    """Where the hourly landing CSV files arrive: ``ADSTATS_LANDING_DIR`` or the data dir's."""
    raw = os.environ.get(LANDING_ENV, "").strip()
    return Path(raw).expanduser().absolute() if raw else (cfg or settings()).landing_dir


def stream_status_path(cfg: Settings) -> Path:
    """The speed layer's status file (``{"watermark": "<ISO-8601>", ...}``)."""
    from speed_layer.stream import status_path

    return status_path(cfg)


# ------------------------------------------------------------------------------------ hours
def as_hour(value: datetime | str) -> datetime:
    """An aware UTC datetime on a whole hour (Airflow passes pendulum datetimes; CLI strings)."""
    if isinstance(value, str):
        from batch_layer.jobs import parse_hour

        return parse_hour(value)
    hour = datetime.fromtimestamp(value.timestamp(), UTC) if value.tzinfo else value.replace(
        tzinfo=UTC)
    if hour.minute or hour.second or hour.microsecond:
        raise ValueError(f"not a whole hour: {value.isoformat()}")
    return hour


def as_day(value: datetime | date | str) -> date:
    if isinstance(value, str):
        return date.fromisoformat(value[:10])
    if isinstance(value, datetime):
        return as_hour(value.replace(minute=0, second=0, microsecond=0)).date()
    return value


def label(hour: datetime) -> str:
    return f"{hour:%Y-%m-%dT%H}"


def landing_files_for_hour(hour: datetime, folder: Path) -> list[Path]:
    """The hour's landing files: ``YYYY-MM-DD_hh-00-00_*.csv`` (utils/generate_sample_data.py
    names them ``…_sample_data.csv``), non-empty, sorted."""
    if not folder.is_dir():
        return []
    pattern = f"{as_hour(hour):%Y-%m-%d_%H}-00-00_*.csv"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.stat().st_size > 0)


def read_watermark(path: Path) -> datetime | None:
    """The stream's event-time watermark from its status file, as far as the archive holds
    it (``archived_watermark``; plain ``watermark`` in status files without it); None when
    there is no stream (file absent) or the file is unreadable (e.g. caught mid-write: the
    next poke reads it)."""
    try:
        status = json.loads(path.read_text())
        raw = status["archived_watermark" if "archived_watermark" in status else "watermark"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("stream status %s unreadable (%s): treated as no watermark", path, exc)
        return None
    if raw in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(raw))
    except ValueError:
        log.warning("stream status %s: watermark %r is not ISO-8601", path, raw)
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True)
class Completeness:
    """Whether an hour's input is complete, and why (the sensor logs ``reason``)."""

    hour: str
    complete: bool
    reason: str
    files: tuple[str, ...] = ()
    watermark: str | None = None
    stream: bool = False


def hour_completeness(
    hour: datetime,
    cfg: Settings | None = None,
    now: datetime | None = None,
    allow_empty: bool | None = None,
    mode: str | None = None,
    grace: timedelta | None = None,
) -> Completeness:
    """Is the hour ``[hour, hour+1h)`` complete?

    * landing side: the hour's landing file(s) are present;
    * stream side: the speed layer's watermark is at or past the hour's end plus ``grace``
      (``ADSTATS_STREAM_GRACE_MINUTES``, 10): everything it will archive for the hour is in the
      master dataset. No status file means no stream.

    ``mode`` (``ADSTATS_HOUR_READY``): ``auto`` (default) = the stream side when a stream
    exists, else the landing side; ``files``, ``stream``, ``both`` = that side / both sides.
    With ``allow_empty`` (``ADSTATS_ALLOW_EMPTY_HOURS``), an hour that is still incomplete
    ``ADSTATS_EMPTY_HOUR_WAIT_MINUTES`` (60) after its end is accepted as having no input.
    """
    cfg = cfg or settings()
    hour = as_hour(hour)
    now = now or datetime.now(UTC)
    mode = (mode or os.environ.get(READY_ENV, "") or "auto").strip().lower()
    if mode not in READY_MODES:
        raise ValueError(f"{READY_ENV} must be one of {', '.join(READY_MODES)}, got {mode!r}")
    grace = grace if grace is not None else timedelta(
        minutes=env_float(STREAM_GRACE_ENV, 10.0) or 0.0)
    if allow_empty is None:
        allow_empty = env_flag(ALLOW_EMPTY_ENV)
    end = hour + HOUR
    folder = landing_dir(cfg)
    files = landing_files_for_hour(hour, folder)
    watermark = read_watermark(stream_status_path(cfg))
    stream = watermark is not None or stream_status_path(cfg).exists()
    files_ok = bool(files)
    stream_ok = watermark is not None and watermark >= end + grace
    need = {"auto": "stream" if stream else "files"}.get(mode, mode)
    done = {"files": files_ok, "stream": stream_ok, "both": files_ok and stream_ok}[need]

    parts = [f"landing: {len(files)} file(s) in {folder}" if files_ok
             else f"landing: no {hour:%Y-%m-%d_%H}-00-00_*.csv in {folder}"]
    if stream:
        parts.append(f"stream watermark {watermark.isoformat() if watermark else 'unknown'}"
                     f" ({'past' if stream_ok else 'before'} {(end + grace).isoformat()})")
    else:
        parts.append("no stream status")
    reason = f"needs {need}; " + "; ".join(parts)
    if not done and allow_empty:
        wait = timedelta(minutes=env_float(EMPTY_WAIT_ENV, 60.0) or 0.0)
        if now >= end + wait:
            done, reason = True, f"accepted as empty (allow_empty, {wait} after the end); {reason}"
    return Completeness(
        hour=label(hour), complete=done, reason=reason, files=tuple(p.name for p in files),
        watermark=watermark.isoformat() if watermark else None, stream=stream,
    )


def hour_is_complete(hour: datetime, cfg: Settings | None = None, **kwargs: Any) -> bool:
    """The sensor's test: see :func:`hour_completeness`."""
    return hour_completeness(hour, cfg, **kwargs).complete


# ----------------------------------------------------------------------------------- ingest
def ingest_hour(
    hour: datetime, cfg: Settings | None = None, spark: SparkSession | None = None
) -> dict[str, Any]:
    """Ingest the hour's landing file(s) into the master dataset (idempotent: files already in
    the manifest are skipped). Returns a JSON-able summary; ``hours_touched`` lists every event
    hour that received new events (late events land in earlier hours)."""
    from batch_layer.ingest import ingest

    cfg = cfg or settings()
    hour = as_hour(hour)
    files = landing_files_for_hour(hour, landing_dir(cfg))
    summary: dict[str, Any] = {"hour": label(hour), "files": [p.name for p in files]}
    if not files:
        log.info("hour %s: no landing file; nothing to ingest", label(hour))
        return {**summary, "new": 0, "rows_written": 0, "hours_touched": []}
    if spark is None:
        from adstats.spark import spark_session

        spark = spark_session("adstats-ingest", cfg)
    report = ingest(files, spark=spark, cfg=cfg, quiet=True)
    log.info("hour %s: %s", label(hour), report.summary())
    return {
        **summary, "new": report.files_new, "skipped": report.files_skipped,
        "rejected": report.files_rejected, "rows_read": report.rows_read,
        "rows_written": report.rows_written, "quarantined": sum(report.quarantined.values()),
        "quarantine_dir": report.quarantine_dir, "hours_touched": sorted(report.hours),
    }


# ----------------------------------------------------------------------------------- checks
def master_rows(hour: datetime, cfg: Settings) -> int:
    """Rows stored in the master dataset for the hour, both doors, from Parquet footers (no
    Spark). An upper bound of the hour's events (the two doors may share events); enough for
    "is there any input"."""
    import pyarrow.parquet as pq

    from batch_layer.master import SOURCES, hour_dir, source_root

    total = 0
    for source in SOURCES:
        folder = hour_dir(source_root(cfg.master_dir, source), as_hour(hour))
        if folder.is_dir():
            total += sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("*.parquet"))
    return total


@dataclass
class HourInput:
    """What went into an hour: its landing files as recorded in the ingest manifest."""

    hour: str
    files: list[str] = field(default_factory=list)
    not_ingested: list[str] = field(default_factory=list)
    rows: int = 0
    quarantined: int = 0
    master_rows: int = 0

    @property
    def quarantine_share(self) -> float:
        return self.quarantined / self.rows if self.rows else 0.0


def hour_input(hour: datetime, cfg: Settings | None = None) -> HourInput:
    """The hour's landing files, matched (name and current sha256) against the manifest."""
    from batch_layer.ingest import file_digest, load_manifest

    cfg = cfg or settings()
    hour = as_hour(hour)
    manifest = load_manifest(cfg)
    found = HourInput(hour=label(hour), master_rows=master_rows(hour, cfg))
    for path in landing_files_for_hour(hour, landing_dir(cfg)):
        found.files.append(path.name)
        entry = manifest.get((path.name, file_digest(path)))
        if entry is None:
            found.not_ingested.append(path.name)
            continue
        found.rows += int(entry.get("rows", 0))
        found.quarantined += int(entry.get("quarantined", 0))
    return found


def gate_problems(
    found: HourInput, allow_empty: bool, max_quarantine_share: float
) -> list[str]:
    """The data-quality gates of an hour (pure): empty list = pass."""
    problems = []
    if found.not_ingested:
        problems.append(f"landing file(s) not ingested (rejected? see the quarantine folder): "
                        f"{', '.join(found.not_ingested)}")
    if found.master_rows == 0 and not allow_empty:
        problems.append("no input events in the master dataset (set the DAG param allow_empty "
                        f"or {ALLOW_EMPTY_ENV}=true to record the hour as empty)")
    if found.quarantine_share > max_quarantine_share:
        problems.append(f"quarantined {found.quarantined:,} of {found.rows:,} landing rows "
                        f"({found.quarantine_share:.1%} > {max_quarantine_share:.1%}, "
                        f"{MAX_QUARANTINE_ENV})")
    return problems


def check_hour(
    hour: datetime,
    cfg: Settings | None = None,
    allow_empty: bool | None = None,
    max_quarantine_share: float | None = None,
) -> dict[str, Any]:
    """Gate the hour before it is recomputed (and so recorded exact); raises
    :class:`DataQualityError` naming the hour and every failed gate."""
    hour = as_hour(hour)
    if allow_empty is None:
        allow_empty = env_flag(ALLOW_EMPTY_ENV)
    if max_quarantine_share is None:
        max_quarantine_share = env_float(MAX_QUARANTINE_ENV, 0.05) or 0.0
    found = hour_input(hour, cfg)
    problems = gate_problems(found, allow_empty, max_quarantine_share)
    if problems:
        raise DataQualityError(f"hour {label(hour)} failed its checks: " + "; ".join(problems))
    result = {**asdict(found), "quarantine_share": found.quarantine_share,
              "allow_empty": allow_empty, "empty": found.master_rows == 0}
    log.info("hour %s passed its checks: %s", label(hour), result)
    return result


# -------------------------------------------------------------------------------- recompute
def stale_periods(
    hour: datetime, touched: Iterable[str], recorded_hours: set[datetime],
    recorded_days: set[date],
) -> tuple[list[datetime], list[date]]:
    """Other hours (and their days) the hour's ingest changed that were already recorded exact:
    they must be recomputed too, or the serving layer would call stale rows exact. Hours not
    recorded yet are left to their own runs. Pure."""
    hour = as_hour(hour)
    extra = sorted({as_hour(h) for h in touched} - {hour})
    hours = [h for h in extra if h in recorded_hours]
    days = sorted({h.date() for h in extra} & recorded_days)
    return hours, days


def recompute_hour(
    hour: datetime,
    cfg: Settings | None = None,
    spark: SparkSession | None = None,
    touched: Iterable[str] = (),
) -> dict[str, Any]:
    """Exact recompute of the hour (``run_batch``: batch_stats rows, then its batch_periods
    row), plus any already-exact hour/day the ingest made stale (see :func:`stale_periods`)."""
    from batch_layer.jobs import run_batch
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import recorded_periods

    cfg = cfg or settings()
    hour = as_hour(hour)
    touched = [t for t in touched if as_hour(t) != hour]
    extra_hours: list[datetime] = []
    extra_days: list[date] = []
    if touched:
        starts = [as_hour(t) for t in touched]
        day_starts = sorted({datetime(h.year, h.month, h.day, tzinfo=UTC) for h in starts})
        with writer_session(cfg) as session:
            rec_hours = recorded_periods(session, "hour", starts)
            rec_days = {d.date() for d in recorded_periods(session, "day", day_starts)}
        extra_hours, extra_days = stale_periods(hour, touched, rec_hours, rec_days)
    if spark is None:
        from adstats.spark import spark_session

        spark = spark_session("adstats-batch", cfg)
    report = run_batch([hour, *extra_hours], extra_days, spark=spark, cfg=cfg, quiet=True)
    log.info("hour %s: %s", label(hour), report.summary())
    return {
        "hour": label(hour), "batch_run_id": report.run_id,
        "input_events": report.input_events.get(("hour", hour), 0),
        "rows_written": report.rows_written,
        "also_hours": [label(h) for h in extra_hours],
        "also_days": [d.isoformat() for d in extra_days],
    }


# --------------------------------------------------------------------------- reconciliation
@dataclass
class Totals:
    """Placement-dimension totals of a period (every event has exactly one placement)."""

    views: int = 0
    clicks: int = 0
    rows: int = 0
    users: int | None = None  # sum over placements of distinct users (exact or estimated)


def _rel(diff: float | None, base: float) -> float | None:
    if diff is None:
        return None
    return diff / base if base else (0.0 if diff == 0 else None)


def reconciliation_record(
    granularity: str, period_start: datetime, batch: Totals, batch_events: int,
    speed: Totals | None, batch_run_id: str | None, run_id: str | None,
) -> dict[str, Any]:
    """The reconciliation row (pure). ``speed`` None = the speed layer has nothing for the
    period: speed figures and differences stay null. Differences are speed − batch; relative
    ones are over batch (null when batch is 0 and speed is not)."""
    from serving_layer.views import bucket_of

    start = as_hour(period_start)
    record: dict[str, Any] = {
        "granularity": granularity, "bucket": bucket_of(granularity, start),
        "period_start": start, "batch_events": batch_events, "batch_views": batch.views,
        "batch_clicks": batch.clicks, "users_exact": batch.users,
        "speed_rows": 0, "speed_views": None, "speed_clicks": None, "users_estimate": None,
        "views_diff": None, "clicks_diff": None, "views_rel_diff": None,
        "clicks_rel_diff": None, "users_rel_error": None,
        "batch_run_id": batch_run_id, "run_id": run_id, "checked_at": datetime.now(UTC),
    }
    if speed is not None and speed.rows:
        record.update(
            speed_rows=speed.rows, speed_views=speed.views, speed_clicks=speed.clicks,
            users_estimate=speed.users, views_diff=speed.views - batch.views,
            clicks_diff=speed.clicks - batch.clicks,
        )
        record["views_rel_diff"] = _rel(record["views_diff"], batch.views)
        record["clicks_rel_diff"] = _rel(record["clicks_diff"], batch.clicks)
        if speed.users is not None and batch.users is not None:
            record["users_rel_error"] = _rel(speed.users - batch.users, batch.users)
    return record


def _totals(rows: Iterable[Any], estimate_users: bool) -> Totals:
    """Placement rows -> totals. ``estimate_users``: union each placement's sketches (the
    speed layer's hourly rows of a day) and sum the estimates."""
    from datasketches import hll_sketch, hll_union

    from adstats.stats import HLL_LG_K

    totals = Totals(users=0)
    unions: dict[str, Any] = {}
    plain: dict[str, int] = {}
    for r in rows:
        totals.views += int(r.views or 0)
        totals.clicks += int(r.clicks or 0)
        totals.rows += 1
        if estimate_users and r.users_sketch is not None:
            unions.setdefault(r.dim_id, hll_union(HLL_LG_K)).update(
                hll_sketch.deserialize(bytes(r.users_sketch)))
        else:
            plain[r.dim_id] = plain.get(r.dim_id, 0) + int(r.distinct_users or 0)
    totals.users = sum(plain.values()) + sum(
        round(u.get_estimate()) for u in unions.values())
    return totals


def reconcile(
    granularity: str, period_start: datetime, cfg: Settings | None = None,
    run_id: str | None = None, max_rel_diff: float | None = None,
) -> dict[str, Any]:
    """Compare the exact batch figures of a period with the speed layer's and upsert the
    ``reconciliation`` row. When the speed layer no longer has the period (its rows expired
    after the daily run) the speed figures of the previous record are kept. Raises
    :class:`ReconciliationError` (after recording) when a relative difference of views or
    clicks exceeds ``max_rel_diff`` (``ADSTATS_RECONCILE_MAX_REL_DIFF``; unset = never)."""
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import (
        read_period,
        read_placement_rows,
        read_reconciliation,
        write_reconciliation,
    )

    cfg = cfg or settings()
    start = as_hour(period_start)
    if max_rel_diff is None:
        max_rel_diff = env_float(RECONCILE_MAX_ENV, None)
    with writer_session(cfg) as session:
        period = read_period(session, granularity, start)
        if period is None:
            raise HourNotReady(f"{granularity} {start.isoformat()} is not recorded in "
                               "batch_periods: nothing exact to reconcile")
        batch = _totals(read_placement_rows(session, "batch", granularity, start), False)
        # The speed layer writes hourly rows only: a day is the sum of its hours.
        speed_rows = read_placement_rows(session, "speed", "hour", start,
                                         whole_day=granularity == "day")
        speed = _totals(speed_rows, estimate_users=True) if speed_rows else None
        record = reconciliation_record(granularity, start, batch, int(period.input_events),
                                       speed, period.run_id, run_id)
        if speed is None:
            previous = read_reconciliation(session, granularity, start)
            if previous and previous.get("speed_rows"):
                kept = Totals(previous["speed_views"], previous["speed_clicks"],
                              previous["speed_rows"], previous["users_estimate"])
                record = reconciliation_record(granularity, start, batch,
                                               int(period.input_events), kept,
                                               period.run_id, run_id)
        write_reconciliation(session, record)
    what = f"{granularity} {label(start) if granularity == 'hour' else start.date()}"
    log.info("reconciliation %s: %s", what, record)
    if max_rel_diff is not None:
        over = {k: record[k] for k in ("views_rel_diff", "clicks_rel_diff")
                if record[k] is not None and abs(record[k]) > max_rel_diff}
        if over:
            raise ReconciliationError(
                f"{what}: speed layer differs from batch by more than {max_rel_diff:.1%}: "
                + ", ".join(f"{k} {v:+.2%}" for k, v in over.items())
                + f" (batch views {record['batch_views']}, clicks {record['batch_clicks']};"
                  f" speed views {record['speed_views']}, clicks {record['speed_clicks']})")
    return jsonable(record)


def jsonable(record: Mapping[str, Any]) -> dict[str, Any]:
    """Datetimes as ISO strings (Airflow XCom stores JSON)."""
    return {k: v.isoformat() if isinstance(v, datetime | date) else v for k, v in record.items()}


# -------------------------------------------------------------------------------------- day
def day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def missing_hours(day: date | datetime | str, cfg: Settings | None = None) -> list[datetime]:
    """The hours of the UTC day not (yet) recorded exact in ``batch_periods``."""
    from batch_layer.master import hours_of_day
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import recorded_periods

    cfg = cfg or settings()
    hours = hours_of_day(as_day(day))
    with writer_session(cfg) as session:
        recorded = recorded_periods(session, "hour", hours)
    return [h for h in hours if h not in recorded]


def day_is_ready(day: date | datetime | str, cfg: Settings | None = None) -> bool:
    """The daily sensor's test: all 24 hours of the day are recorded exact."""
    missing = missing_hours(day, cfg)
    if missing:
        log.info("day %s: %d hour(s) not exact yet: %s", as_day(day), len(missing),
                 ", ".join(f"{h:%H}" for h in missing))
    return not missing


def recompute_day(
    day: date | datetime | str, cfg: Settings | None = None, spark: SparkSession | None = None
) -> dict[str, Any]:
    """Exact daily recompute (``run_batch`` with the day only), once its hours are exact."""
    from batch_layer.jobs import run_batch

    cfg = cfg or settings()
    day = as_day(day)
    missing = missing_hours(day, cfg)
    if missing:
        raise HourNotReady(f"day {day}: hour(s) {', '.join(f'{h:%H}' for h in missing)} not "
                           "recorded exact in batch_periods; the daily recompute waits for them")
    if spark is None:
        from adstats.spark import spark_session

        spark = spark_session("adstats-batch", cfg)
    report = run_batch([], [day], spark=spark, cfg=cfg, quiet=True)
    log.info("day %s: %s", day, report.summary())
    return {"day": day.isoformat(), "batch_run_id": report.run_id,
            "input_events": report.input_events.get(("day", day_start(day)), 0),
            "rows_written": report.rows_written}


def expire_speed_rows(day: date | datetime | str, cfg: Settings | None = None) -> dict[str, Any]:
    """Delete the day's realtime rows, now superseded by exact batch rows: one partition
    delete per dimension of ``speed_stats`` (key (dimension, 'hour', day)), with the writer
    role. Refuses unless the day and all its hours are recorded exact."""
    from adstats.stats import DIMENSIONS
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import delete_speed_day, read_period

    cfg = cfg or settings()
    day = as_day(day)
    missing = missing_hours(day, cfg)
    with writer_session(cfg) as session:
        day_done = read_period(session, "day", day_start(day)) is not None
        if missing or not day_done:
            raise HourNotReady(
                f"day {day}: not expiring speed rows, the batch layer has not finished it "
                f"(day recorded: {day_done}; hours missing: "
                f"{', '.join(f'{h:%H}' for h in missing) or 'none'})")
        partitions = delete_speed_day(session, f"{day:%Y-%m-%d}", list(DIMENSIONS))
    log.info("day %s: deleted %d speed_stats partition(s)", day, partitions)
    return {"day": day.isoformat(), "partitions_deleted": partitions}


# ------------------------------------------------------------------------------- callbacks
def describe_failure(context: Mapping[str, Any]) -> str:
    """One line for a failed task: DAG, task, period, try, error (an Airflow context dict)."""
    ti = context.get("task_instance") or context.get("ti")
    start = context.get("data_interval_start")
    period = label(as_hour(start)) if start is not None else "?"
    if start is not None and context.get("dag") is not None and \
            getattr(context["dag"], "dag_id", "").endswith("daily"):
        period = f"{as_day(start)}"
    error = context.get("exception")
    line = (f"{getattr(ti, 'dag_id', '?')}.{getattr(ti, 'task_id', '?')} failed for "
            f"{period} (try {getattr(ti, 'try_number', '?')}): "
            f"{type(error).__name__ if error else 'error'}: {error}")
    if start is not None and type(error).__name__ == "AirflowSensorTimeout":
        line += f" -- {why_still_waiting(getattr(ti, 'dag_id', ''), start)}"
    return line


def why_still_waiting(dag_id: str, start: datetime) -> str:
    """What a timed-out sensor was still waiting for: Airflow's own timeout message names
    neither the period nor the missing input, and that is what an operator needs first."""
    try:
        if dag_id.endswith("daily"):
            missing = missing_hours(start)
            return (f"day {as_day(start)}: {len(missing)} hour(s) never became exact: "
                    f"{', '.join(f'{h:%H}' for h in missing) or 'none (now ready)'}; run or "
                    f"repair those hours (ad_stats_hourly / adstats batch range), then clear "
                    f"this run")
        state = hour_completeness(start)
        return (f"hour {state.hour}: its input never arrived ({state.reason}); land the "
                f"hour's file or set allow_empty, then clear this run")
    except Exception as exc:  # noqa: BLE001 - a callback must not fail on a second error
        return f"(could not tell what was missing: {type(exc).__name__}: {exc})"


def log_failure(context: Mapping[str, Any]) -> None:
    """``on_failure_callback``: log what failed and for which period."""
    log.error("%s", describe_failure(context))


# ----------------------------------------------------------------------------- DAG settings
DAG_START_ENV = "ADSTATS_DAG_START"    # first data interval of both DAGs (catchup from there)
DEFAULT_DAG_START = "2026-01-01"


def dag_start() -> datetime:
    """``ADSTATS_DAG_START`` (ISO date or hour, UTC; default 2026-01-01), on a whole hour."""
    raw = os.environ.get(DAG_START_ENV, "").strip() or DEFAULT_DAG_START
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"{DAG_START_ENV} must be an ISO date, got {raw!r}") from exc
    parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    return parsed.replace(minute=0, second=0, microsecond=0)


def env_minutes(name: str, default: float) -> timedelta:
    """A duration in minutes from the environment (DAG sensor intervals and timeouts)."""
    return timedelta(minutes=float(os.environ.get(name) or default))


def dag_default_args(retry_minutes: float, max_retry_minutes: float) -> dict[str, Any]:
    """Task defaults shared by the DAGs: ``ADSTATS_DAG_RETRIES`` retries (3) with the delay
    doubling from ``retry_minutes`` up to ``max_retry_minutes``, and a failure log line."""
    return {
        "owner": "adstats",
        "retries": int(os.environ.get("ADSTATS_DAG_RETRIES") or 3),
        "retry_delay": timedelta(minutes=retry_minutes),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=max_retry_minutes),
        "on_failure_callback": log_failure,
    }
