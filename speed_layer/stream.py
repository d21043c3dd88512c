"""``adstats stream``: Spark Structured Streaming from Kafka to the realtime views, exactly once.

Three queries read topic ``ad-events``, each with its own checkpoint under
``<state_dir>/stream/checkpoints/``:

    realtime  parse -> valid -> watermark -> dedup by event_id -> approximate_stats (the SAME
              stats module as the batch layer) -> foreachBatch upsert of absolute values into
              speed_stats (a replayed micro-batch rewrites the same values)
    archive   parse -> valid -> Parquet by event date/hour in <master>/stream (Spark's
              exactly-once file sink), so the batch layer recomputes from everything
    deadletter parse -> rejected -> ad-events-dlq (original payload, reason in headers;
              at-least-once) + per-micro-batch counts by reason

Events later than the watermark are dropped by the realtime query (Spark counts them:
``numRowsDroppedByWatermark``) but archived, so the batch layer repairs them; ``late.py``
splits each batch's count by event hour.

The realtime query runs in the FAIR scheduler pool served first; the archive, the dead letters
and the late-event re-reads run in the background pool, their micro-batches cut into small
tasks so that a core is soon free for the realtime query.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from adstats.config import Settings, settings
from adstats.events import EVENT_ID, parse_json_events, typed_event_columns
from speed_layer.late import LateCounter

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming import StreamingQuery


@dataclass(frozen=True)
class StreamOptions:
    watermark: str = "10 minutes"
    trigger: str = "1 second"
    # The archive feeds the hourly batch layer and the dead letters an operator: neither needs
    # second-fresh micro-batches, and each of their batches re-reads and re-parses its slice of
    # the topic on the cores the realtime query needs (and a 1 s archive writes many tiny files).
    archive_trigger: str = "10 seconds"
    # Splits the archive/dead-letter micro-batches into tasks of at most this many messages
    # (Kafka source ``maxRecordsPerPartition``), so that while they catch up their tasks stay
    # short and the scheduler soon hands a core back to the realtime query. (A cap on offsets
    # per micro-batch would do that too, but also cap their throughput at cap / trigger.)
    background_task_records: int | None = 25_000
    starting_offsets: str = "earliest"
    max_offsets_per_trigger: int | None = None


def stream_dir(cfg: Settings) -> Path:
    return cfg.state_dir / "stream"


def status_path(cfg: Settings) -> Path:
    return stream_dir(cfg) / "status.json"


def kafka_source(
    spark: SparkSession, cfg: Settings, options: StreamOptions, task_records: int | None = None
) -> DataFrame:
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", cfg.kafka_bootstrap)
        .option("subscribe", cfg.topic)
        .option("startingOffsets", options.starting_offsets)
        # A broker restart must not fail the job: keep retrying offset look-ups for ~2 min.
        .option("fetchOffset.numRetries", "120")
        .option("fetchOffset.retryIntervalMs", "1000")
        .option("kafka.reconnect.backoff.max.ms", "2000")
    )
    if options.max_offsets_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(options.max_offsets_per_trigger))
    if task_records:
        reader = reader.option("maxRecordsPerPartition", str(task_records))
    return reader.load()


def parse_messages(messages: DataFrame) -> DataFrame:
    """Kafka rows -> ``_reason`` (null when valid), the raw fields, and the message itself."""

    return parse_json_events(messages, keep=("key", "value", "topic", "partition", "offset"))


def valid_events(parsed: DataFrame) -> DataFrame:
    """Typed events with ``event_time`` (the watermark column) and the archive partitions."""
    from pyspark.sql import functions as F

    from batch_layer.master import partition_columns

    typed = parsed.where(F.col("_reason").isNull()).select(
        *typed_event_columns({c: F.col(c) for c in parsed.columns})
    )
    return typed.select(
        "*", F.timestamp_seconds("timestamp").alias("event_time"), *partition_columns()
    )


def rejected_messages(parsed: DataFrame) -> DataFrame:
    """Dead letters: the original bytes as value, the reason and origin as Kafka headers."""
    from pyspark.sql import functions as F

    header = lambda k, v: F.struct(F.lit(k).alias("key"), v.cast("binary").alias("value"))  # noqa: E731
    return parsed.where(F.col("_reason").isNotNull()).select(
        "key", "value",
        F.array(
            header("reason", F.col("_reason")),
            header("source", F.concat_ws(":", "topic", "partition", "offset")),
        ).alias("headers"),
        F.col("_reason").alias("reason"),
    )


def realtime_rows(events: DataFrame, watermark: str) -> DataFrame:
    from adstats.stats import approximate_stats

    on_time = events.withWatermark("event_time", watermark).dropDuplicatesWithinWatermark(
        [EVENT_ID]
    )
    return approximate_stats(on_time)


def _upsert_realtime(session_holder: dict):
    from serving_layer.views import write_speed_rows

    def write(batch: DataFrame, batch_id: int) -> None:
        rows = [r.asDict() for r in batch.collect()]
        if rows:
            write_speed_rows(session_holder["session"], rows)

    return write


def _send_dead_letters(cfg: Settings):
    counts_dir = stream_dir(cfg) / "deadletter-counts"
    counts_dir.mkdir(parents=True, exist_ok=True)

    def write(batch: DataFrame, batch_id: int) -> None:
        batch = batch.persist()
        try:
            counts = {r["reason"]: r["count"] for r in batch.groupBy("reason").count().collect()}
            if counts:
                (batch.drop("reason").write.format("kafka")
                 .option("kafka.bootstrap.servers", cfg.kafka_bootstrap)
                 .option("topic", cfg.dlq_topic).save())
                # One file per micro-batch id that had dead letters: a replayed batch (same
                # offsets, same messages) overwrites its own count; clean batches write nothing.
                _atomic_write(counts_dir / f"{batch_id}.json", json.dumps(counts))
        finally:
            batch.unpersist()

    return write


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def start_queries(
    spark: SparkSession, cfg: Settings, options: StreamOptions, session_holder: dict
) -> dict[str, StreamingQuery]:
    from adstats.spark import BACKGROUND_POOL, REALTIME_POOL, use_pool
    from batch_layer.master import source_root

    checkpoints = stream_dir(cfg) / "checkpoints"
    events = valid_events(parse_messages(kafka_source(spark, cfg, options)))
    # A query's jobs run in the scheduler pool of the thread that starts it.
    use_pool(spark, REALTIME_POOL)
    queries = {
        "realtime": realtime_rows(events, options.watermark).writeStream
        .queryName("adstats-realtime").outputMode("update")
        .foreachBatch(_upsert_realtime(session_holder))
        .option("checkpointLocation", str(checkpoints / "realtime"))
        .trigger(processingTime=options.trigger).start(),
    }
    use_pool(spark, BACKGROUND_POOL)
    parsed = parse_messages(kafka_source(spark, cfg, options, options.background_task_records))
    queries |= {
        "archive": valid_events(parsed).drop("event_time").writeStream
        .queryName("adstats-archive").format("parquet").partitionBy("date", "hour")
        .option("checkpointLocation", str(checkpoints / "archive"))
        .trigger(processingTime=options.archive_trigger)
        .start(str(source_root(cfg.master_dir, "stream"))),
        "deadletter": rejected_messages(parsed).writeStream
        .queryName("adstats-deadletter").foreachBatch(_send_dead_letters(cfg))
        .option("checkpointLocation", str(checkpoints / "deadletter"))
        .trigger(processingTime=options.archive_trigger).start(),
    }
    return queries


class StatusWriter:
    """Persists the queries' progress to status.json so another process can read it."""

    def __init__(self, cfg: Settings, queries: dict[str, StreamingQuery],
                 late: LateCounter | None = None) -> None:
        self.cfg, self.queries, self.late = cfg, queries, late
        self.realtime_id = str(queries["realtime"].id)  # fixed for the query's life
        self.archived_watermark: str | None = None

    def write(self) -> dict:
        realtime = self.queries["realtime"].lastProgress
        status: dict = {"updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "pid": os.getpid(), "queries": {}}
        for name, query in self.queries.items():
            progress = query.lastProgress or {}
            status["queries"][name] = {
                "active": query.isActive, "batch_id": progress.get("batchId"),
                "input_rows_per_s": progress.get("inputRowsPerSecond"),
                "processed_rows_per_s": progress.get("processedRowsPerSecond"),
            }
        if realtime:
            # Every progress Spark still holds (recentProgress: the last 100 batches), not just
            # the last one: several micro-batches may finish between two writes.
            recent = self.queries["realtime"].recentProgress  # one py4j round trip, used twice
            if self.late is not None:
                self.late.observe(self.realtime_id, recent)
            status["realtime_batch_ms"] = batch_durations(recent)
            source = _source(realtime)
            metrics = source.get("metrics") or {}
            lag = metrics.get("maxOffsetsBehindLatest")
            watermark = (realtime.get("eventTime") or {}).get("watermark")
            if _covers(self.queries["archive"].lastProgress, realtime):
                self.archived_watermark = watermark
            status.update({
                "last_batch_time": realtime.get("timestamp"),
                "input_rate": realtime.get("inputRowsPerSecond"),
                "processing_rate": realtime.get("processedRowsPerSecond"),
                "kafka_lag": _offsets_behind(source) if lag is None else int(float(lag)),
                "watermark": watermark,
                # What the batch layer waits for: the watermark, but only once the archive
                # holds every message the realtime query has read (it runs on its own trigger
                # and may lag behind, e.g. after a restart).
                "archived_watermark": self.archived_watermark,
            })
        if self.late is not None:
            status.update(self.late.summary())
        status["dlq_count"] = dead_letter_total(self.cfg)
        _atomic_write(status_path(self.cfg), json.dumps(status, indent=2))
        return status


def batch_durations(progresses: list[dict]) -> dict[str, float]:
    """Median milliseconds per phase (Spark's ``durationMs``) over the recent micro-batches
    that read input: where a realtime batch spends its time (``addBatch`` = the aggregation,
    state store and sink; ``walCommit``/``commitOffsets`` = the checkpoint)."""
    from statistics import median

    busy = [p.get("durationMs") or {} for p in progresses if p.get("numInputRows")]
    phases = sorted({k for d in busy for k in d})
    return {k: float(median(d.get(k, 0) for d in busy)) for k in phases}


def _source(progress: dict | None) -> dict:
    """The (only) Kafka source of a query's progress."""
    return ((progress or {}).get("sources") or [{}])[0]


def _offsets(source: dict, key: str) -> dict | None:
    """``{topic: {partition: offset}}`` of a source's ``startOffset``/``endOffset``/
    ``latestOffset`` (Spark gives a JSON string or, after a restart, a dict)."""
    value = source.get(key)
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return None


def _covers(archive: dict | None, realtime: dict | None) -> bool:
    """Whether the archive query has committed every Kafka offset the realtime query has."""
    done = _offsets(_source(archive), "endOffset")
    needed = _offsets(_source(realtime), "endOffset")
    if not done or not needed:
        return False
    try:
        return all(int(done[t][p]) >= int(o) for t in needed for p, o in needed[t].items())
    except (KeyError, TypeError, ValueError):
        return False


def _offsets_behind(source: dict) -> int | None:
    """Messages between the last processed offsets and the latest ones, if both are known."""
    end, latest = _offsets(source, "endOffset"), _offsets(source, "latestOffset")
    try:
        return sum(max(0, latest[t][p] - end[t][p]) for t in latest for p in latest[t])
    except (KeyError, TypeError, ValueError):
        return None


def dead_letter_total(cfg: Settings) -> int:
    total = 0
    for f in (stream_dir(cfg) / "deadletter-counts").glob("*.json"):
        try:
            total += sum(json.loads(f.read_text()).values())
        except (OSError, ValueError):
            continue
    return total


def read_status(cfg: Settings | None = None) -> dict | None:
    try:
        return json.loads(status_path(cfg or settings()).read_text())
    except (OSError, ValueError):
        return None


def run_stream(
    options: StreamOptions | None = None, cfg: Settings | None = None, quiet: bool = False
) -> int:
    """Run the speed layer until SIGTERM/Ctrl-C (clean stop) or a query fails."""
    from adstats.spark import spark_session
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import write_late_events

    cfg, options = cfg or settings(), options or StreamOptions()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stream_dir(cfg).mkdir(parents=True, exist_ok=True)
    spark = spark_session("adstats-stream", cfg, streaming=True)
    with writer_session(cfg) as session:
        holder = {"session": session}
        queries = start_queries(spark, cfg, options, holder)
        late = LateCounter(spark, cfg, stream_dir(cfg) / "checkpoints" / "realtime",
                           stream_dir(cfg) / "late-by-batch.json",
                           lambda key, hours: write_late_events(session, key, hours))
        status = StatusWriter(cfg, queries, late)
        if not quiet:
            print(f"stream: reading {cfg.topic} at {cfg.kafka_bootstrap}; watermark "
                  f"{options.watermark}, trigger {options.trigger} (archive and dead "
                  f"letters {options.archive_trigger}); status in "
                  f"{status_path(cfg)}", file=sys.stderr, flush=True)
        failed = None
        try:
            while not stop.is_set():
                for name, query in queries.items():
                    if not query.isActive:
                        failed = f"query {name} stopped: {query.exception()}"
                        stop.set()
                status.write()
                stop.wait(1.0)
        except Exception as exc:  # noqa: BLE001 - e.g. the JVM got the signal first and is gone
            if not stop.is_set():
                failed = f"lost the Spark driver: {exc}"
        finally:
            _shut_down(queries, status, late, spark)
    if failed:
        print(f"stream: {failed}", file=sys.stderr)
        return 1
    if not quiet:
        print("stream: stopped cleanly", file=sys.stderr)
    return 0


def _shut_down(queries: dict, status: StatusWriter, late: LateCounter,
               spark: SparkSession) -> None:
    """Stop every query (each commits or abandons its current micro-batch), give late events
    of the last batches their hours, then stop Spark. Each step is tolerant: after a
    group-wide signal the JVM may already be stopping."""
    steps = [*(q.stop for q in queries.values()), status.write,
             lambda: late.wait_idle(60), status.write, spark.stop]
    for step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001
            pass


def format_status(status: dict | None) -> str:
    if not status:
        return "stream: no status yet (is `adstats stream` running?)"
    lines = [f"updated {status.get('updated_at')} (pid {status.get('pid')})"]
    for key in ("last_batch_time", "input_rate", "processing_rate", "kafka_lag", "watermark",
                "dlq_count", "late_count"):
        value = status.get(key)
        if isinstance(value, float):
            value = f"{value:,.1f}"
        lines.append(f"  {key:<16} {value}")
    for name, q in status.get("queries", {}).items():
        lines.append(f"  query {name:<11} active={q['active']} batch={q['batch_id']}")
    by_hour = status.get("late_by_hour") or {}
    if by_hour or status.get("late_unattributed"):
        lines.append("  late events by hour (dropped from the realtime view, archived for "
                     "the batch layer):")
        lines += [f"    {hour}  {n:>8,}" for hour, n in by_hour.items()]
        if status.get("late_unattributed"):
            lines.append(f"    not attributed to an hour: {status['late_unattributed']:,}")
    return "\n".join(lines)

