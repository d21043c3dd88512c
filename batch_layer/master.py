"""The master dataset: immutable, append-only Parquet partitioned by event date and hour.

    <master>/files/date=YYYY-MM-DD/hour=H/part-*.parquet    events ingested from landing files
    <master>/stream/date=YYYY-MM-DD/hour=H/...              events archived by the speed layer
                                                            (Spark file sink, _spark_metadata log)
    <master>/_manifest/ingested.jsonl                       one line per ingested landing file

The two doors are kept in separate folders because Spark's exactly-once file sink owns its
folder: readers of ``stream/`` must go through its metadata log, which would hide files written
by ingest. The batch layer reads both and removes events that came in through both doors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from adstats.events import event_schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SOURCES = ("files", "stream")


def partition_schema():
    """Event schema plus the partition columns (explicit: no type inference of ``date``)."""
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    return StructType([
        *event_schema().fields,
        StructField("date", StringType(), False),
        StructField("hour", IntegerType(), False),
    ])


def partition_columns(timestamp: str = "timestamp") -> list:
    """``date`` (YYYY-MM-DD) and ``hour`` (0-23) of an epoch-seconds column, UTC."""
    from pyspark.sql import functions as F

    ts = F.timestamp_seconds(F.col(timestamp))
    return [F.date_format(ts, "yyyy-MM-dd").alias("date"), F.hour(ts).alias("hour")]


def hour_dir(root: Path, hour: datetime) -> Path:
    return root / f"date={hour:%Y-%m-%d}" / f"hour={hour.hour}"


def hours_of_day(day: date) -> list[datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return [start + timedelta(hours=h) for h in range(24)]


def source_root(master: Path, source: str) -> Path:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    return master / source


@contextmanager
def master_lock(master: Path) -> Iterator[None]:
    """One ingest or batch run at a time over the master dataset (Airflow runs several hours at
    once): an ingest that adds late events to an hour whose recompute is running would
    otherwise let that hour be recorded exact without them, and two ingests could each miss
    the other's copy of an event. A ``flock`` on ``<master>/_lock``: processes on one machine
    or on a shared filesystem that supports locks. The speed layer's archive does not take it
    (its own folder, its own exactly-once protocol)."""
    import fcntl

    master.mkdir(parents=True, exist_ok=True)
    with (master / "_lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _has_data(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix == ".parquet" for p in folder.iterdir())


def read_source(
    spark: SparkSession, master: Path, source: str, hours: Iterable[datetime]
) -> DataFrame | None:
    """Events of ``source`` in the given hours, or None when none of those hours has data.
    Only the hours' folders are listed, never the whole dataset."""
    from pyspark.sql import functions as F

    root = source_root(master, source)
    hours = sorted(set(hours))
    if source == "stream":
        # The file sink's metadata log is the truth for what was committed; filter by partition.
        if not (root / "_spark_metadata").is_dir():
            return None
        if not any(_has_data(hour_dir(root, h)) for h in hours):
            return None
        wanted = sorted({f"{h:%Y-%m-%d}/{h.hour}" for h in hours})
        frame = spark.read.schema(partition_schema()).parquet(str(root))
        return frame.where(F.col("date").isin(sorted({w.split("/")[0] for w in wanted}))).where(
            F.concat_ws("/", "date", "hour").isin(wanted)
        )
    paths = [str(hour_dir(root, h)) for h in hours if _has_data(hour_dir(root, h))]
    if not paths:
        return None
    return spark.read.schema(partition_schema()).option("basePath", str(root)).parquet(*paths)


def read_events(spark: SparkSession, master: Path, hours: Iterable[datetime]) -> DataFrame | None:
    """All events of the given hours from both doors, each event once (by ``event_id``)."""
    hours = list(hours)
    from_files = read_source(spark, master, "files", hours)
    from_stream = read_source(spark, master, "stream", hours)
    if from_stream is None:
        return from_files
    # The archive may hold a re-delivered event twice (after the watermark forgot it).
    streamed = from_stream.dropDuplicates(["event_id"])
    if from_files is None:
        return streamed
    # Ingest already keeps files free of duplicates; add streamed events files do not have.
    only_streamed = streamed.join(from_files.select("event_id"), "event_id", "left_anti")
    return from_files.unionByName(only_streamed)
