"""Late events per hour, counted live by the speed layer.

Spark tells how many rows each realtime micro-batch dropped as later than the watermark
(``numRowsDroppedByWatermark``), not which hours they belong to. Kafka still holds the
micro-batch's messages, so for a batch that dropped rows we re-read exactly its offset range
and apply Spark's own rule: in micro-batch N an event is late when its event time is at or
before the watermark of batch N-1 (Spark's ``PropagateWatermarkSimulator`` filters late events
with the previous batch's watermark, ``event_time <= watermark``). The split is exact, is
checked against Spark's count, and costs nothing for batches that dropped nothing.

Counts go to ``speed_late_events`` in Cassandra (one row per hour and micro-batch, absolute
values, so an attribution done twice rewrites the same rows) and to ``late-by-batch.json``
beside the status file, which ``adstats stream status`` and the API read.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from adstats.config import Settings


@dataclass
class LateBatch:
    """One realtime micro-batch that dropped late rows, and (once attributed) their hours."""

    dropped: int
    start: dict | None = None  # {topic: {partition: offset}} read from, inclusive
    end: dict | None = None  # ... up to, exclusive
    hours: dict[str, int] | None = None  # ISO hour -> late events; None = not attributed yet
    error: str | None = None
    final: bool = False  # the error will not go away (offsets purged, counts disagree)

    def to_json(self) -> dict:
        return {"dropped": self.dropped, "start": self.start, "end": self.end,
                "hours": self.hours, "error": self.error, "final": self.final}

    @classmethod
    def from_json(cls, raw: object) -> LateBatch:
        if isinstance(raw, int):  # files written before per-hour attribution
            return cls(dropped=raw, error="counted before per-hour attribution existed",
                       final=True)
        raw = raw if isinstance(raw, dict) else {}
        return cls(int(raw.get("dropped") or 0), raw.get("start"), raw.get("end"),
                   raw.get("hours"), raw.get("error"), bool(raw.get("final")))


def batch_watermark_ms(checkpoint: Path, batch_id: int) -> int | None:
    """``batchWatermarkMs`` of a micro-batch from the query's offset log (None once purged:
    Spark keeps the last ``minBatchesToRetain`` batches, 100 by default)."""
    if batch_id < 0:
        return 0
    try:
        lines = (checkpoint / "offsets" / str(batch_id)).read_text().splitlines()
        return int(json.loads(lines[1])["batchWatermarkMs"])
    except (OSError, IndexError, KeyError, TypeError, ValueError):
        return None


def late_events_by_hour(
    spark: SparkSession, cfg: Settings, start: Mapping, end: Mapping, watermark_ms: int
) -> dict[str, int]:
    """Valid events in the Kafka offset range ``[start, end)`` whose event time is at or before
    ``watermark_ms``, counted per UTC hour (ISO-8601 keys)."""
    from pyspark.sql import functions as F

    from adstats.stats import with_period
    from speed_layer.stream import parse_messages, valid_events

    messages = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", cfg.kafka_bootstrap)
        .option("assign", json.dumps({t: [int(p) for p in parts] for t, parts in end.items()}))
        .option("startingOffsets", json.dumps(_offset_map(start, end)))
        .option("endingOffsets", json.dumps(_offset_map(end, end)))
        # A range the topic no longer holds (retention) must fail, not count short.
        .option("failOnDataLoss", "true")
        .load()
    )
    late = valid_events(parse_messages(messages)).where(
        F.col("timestamp") * 1000 <= F.lit(watermark_ms))
    rows = with_period(late, "hour").groupBy("period_start").count().collect()
    return {_iso_hour(r["period_start"]): int(r["count"]) for r in rows}


def _offset_map(offsets: Mapping, partitions: Mapping) -> dict:
    """Offsets for every partition of ``partitions``; one missing from ``offsets`` (new in this
    batch) starts at the beginning (-2 = earliest)."""
    return {t: {str(p): int((offsets.get(t) or {}).get(str(p), -2)) for p in parts}
            for t, parts in partitions.items()}


def _iso_hour(value: datetime) -> str:
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat(timespec="seconds")


# Done batches more than this many batch ids behind the newest are folded into running totals
# (Spark's recentProgress, which ``observe`` reads, holds the last 100), so the file stays small
# however many batches see late events. Cassandra keeps the per-batch rows.
KEEP_BATCHES = 200


def batch_key(query_id: str, batch_id: int) -> str:
    """``<streaming query id>/<batch id>``: the query id survives restarts from the same
    checkpoint (batch ids go on) and changes with a new checkpoint (batch ids start again)."""
    return f"{query_id}/{batch_id}"


def split_batch_key(key: str) -> tuple[str, int | None]:
    """The query id and batch id of a key (keys written before per-hour attribution were a bare
    batch id: no query id)."""
    query, _, batch_id = key.rpartition("/")
    try:
        return query, int(batch_id)
    except ValueError:
        return query, None


def hours_total(
    batches: Mapping[str, LateBatch], base: LateBatch | None = None
) -> tuple[dict[str, int], int]:
    """Late events per hour over all batches (plus the folded totals ``base``), and the dropped
    rows not (yet) attributed."""
    by_hour: dict[str, int] = dict(base.hours or {}) if base else {}
    unattributed = base.dropped - sum(by_hour.values()) if base else 0
    for batch in batches.values():
        if batch.hours is None:
            unattributed += batch.dropped
            continue
        for hour, n in batch.hours.items():
            by_hour[hour] = by_hour.get(hour, 0) + n
    return dict(sorted(by_hour.items())), unattributed


@dataclass
class LateCounter:
    """Keeps ``late-by-batch.json`` and attributes new late batches on a background thread
    (a Spark job per batch with drops), so the status loop never waits on it."""

    spark: SparkSession
    cfg: Settings
    checkpoint: Path
    file: Path
    write_hours: Callable[[str, dict[str, int]], None]  # (batch key, hours) -> Cassandra
    batches: dict[str, LateBatch] = field(default_factory=dict)
    folded: LateBatch = field(default_factory=lambda: LateBatch(0, hours={}))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        try:
            raw = json.loads(self.file.read_text())
            if "batches" in raw:
                self.folded = LateBatch.from_json(raw.get("folded"))
                self.folded.hours = self.folded.hours or {}
                raw = raw["batches"]
            self.batches = {k: LateBatch.from_json(v) for k, v in raw.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            self.batches = {}
        for key, batch in self.batches.items():
            if batch.hours is None and not batch.final and batch.end:
                self._queue.put(key)  # the stream stopped (or Kafka was away) before
        self._thread = threading.Thread(target=self._work, name="late-counter", daemon=True)
        self._thread.start()

    def observe(self, query_id: str, progresses: list[dict]) -> None:
        """Record the realtime query's recent progresses: every batch that dropped rows."""
        from speed_layer.stream import _offsets, _source

        changed = []
        with self._lock:
            for progress in progresses:
                dropped = sum(op.get("numRowsDroppedByWatermark", 0)
                              for op in progress.get("stateOperators", []))
                key = batch_key(query_id, progress["batchId"])
                if dropped <= 0 or key in self.batches:
                    continue
                source = _source(progress)
                self.batches[key] = LateBatch(dropped, _offsets(source, "startOffset"),
                                              _offsets(source, "endOffset"))
                changed.append(key)
            if changed:
                self._fold(query_id)
                self._save()
        for key in changed:
            self._queue.put(key)

    def summary(self) -> dict:
        with self._lock:
            by_hour, unattributed = hours_total(self.batches, self.folded)
            total = self.folded.dropped + sum(b.dropped for b in self.batches.values())
        return {"late_count": total, "late_by_hour": by_hour, "late_unattributed": unattributed}

    def wait_idle(self, timeout: float) -> None:
        """Give queued attributions up to ``timeout`` seconds (on shutdown)."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _work(self) -> None:
        from adstats.spark import BACKGROUND_POOL, use_pool

        use_pool(self.spark, BACKGROUND_POOL)  # never ahead of the realtime query
        while True:
            key = self._queue.get()
            if isinstance(key, threading.Event):
                key.set()
                continue
            with self._lock:
                batch = self.batches[key]
            hours, error, final = None, None, False
            try:
                hours, error = self._attribute(key, batch)
                final = error is not None
            except Exception as exc:  # noqa: BLE001 - Kafka away, Spark stopping: retried at
                # the next start; the batch's count stays in late_unattributed meanwhile
                error = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            with self._lock:
                batch.hours, batch.error, batch.final = hours, error, final
                self._save()

    def _attribute(self, key: str, batch: LateBatch) -> tuple[dict[str, int] | None, str | None]:
        batch_id = split_batch_key(key)[1]
        watermark = None if batch_id is None else \
            batch_watermark_ms(self.checkpoint, batch_id - 1)
        if watermark is None or not batch.start or not batch.end:
            return None, "offsets or watermark of the micro-batch no longer known"
        hours = late_events_by_hour(self.spark, self.cfg, batch.start, batch.end, watermark)
        if sum(hours.values()) != batch.dropped:
            return None, (f"re-read found {sum(hours.values())} late events, Spark dropped "
                          f"{batch.dropped}")
        self.write_hours(key, hours)
        return hours, None

    def _fold(self, query_id: str) -> None:
        """Fold done batches of older checkpoints, or far behind the newest, into ``folded``."""
        ids = {key: split_batch_key(key) for key in self.batches}
        newest = max((b for q, b in ids.values() if q == query_id and b is not None), default=0)
        for key, (query, batch_id) in ids.items():
            batch = self.batches[key]
            if batch.hours is None and not batch.final:
                continue  # still to attribute
            if query == query_id and batch_id is not None and batch_id > newest - KEEP_BATCHES:
                continue
            self.folded.dropped += batch.dropped
            for hour, n in (batch.hours or {}).items():
                self.folded.hours[hour] = self.folded.hours.get(hour, 0) + n
            del self.batches[key]

    def _save(self) -> None:
        from speed_layer.stream import _atomic_write

        _atomic_write(self.file, json.dumps({
            "folded": self.folded.to_json(),
            "batches": {k: b.to_json() for k, b in self.batches.items()}}))
