"""Speed layer on the real stack: `adstats stream` as its own process, killed and restarted,
with a broker restart, dead letters and late events."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from adstats.stack import manager
from adstats.stack.services import Kafka
from serving_layer.cassandra_session import writer_session
from speed_layer.stream import read_status
from tests.oracle import compute_stats, load_events
from utils.generate_sample_data import generate
from utils.produce_events import produce


class StreamProcess:
    """`adstats stream` in its own process group, on the test's topic and folders."""

    def __init__(self, cfg, log: Path, *extra: str) -> None:
        self.cfg, self.log, self.extra = cfg, log, extra
        self.proc: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "ADSTATS_TOPIC": self.cfg.topic,
                "ADSTATS_DLQ_TOPIC": self.cfg.dlq_topic,
                "ADSTATS_DATA_DIR": str(self.cfg.data_dir),
                "ADSTATS_STATE_DIR": str(self.cfg.state_dir)}

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "adstats.cli", "stream", "--trigger", "1 second",
                 *self.extra], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        """SIGKILL the whole process group we started (driver and its JVM)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        """SIGTERM the driver only: it stops its queries and exits cleanly."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
                return -9
        return self.proc.returncode

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]


def _wait(condition, timeout: float, what: str, stream: StreamProcess | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stream is not None:
            stream.assert_alive()
        if condition():
            return
        time.sleep(1)
    tail = stream.log.read_text()[-3000:] if stream else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


@pytest.fixture
def stream_cfg(stack, tmp_path):
    """Settings with a fresh topic pair and folders for one test."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    cfg = dataclasses.replace(
        stack, topic=name, dlq_topic=f"{name}-dlq", data_dir=tmp_path / "data",
        state_dir=tmp_path / "state",
    )
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    admin.create_topics([NewTopic(cfg.topic, 4, 1), NewTopic(cfg.dlq_topic, 1, 1)])
    yield cfg
    admin.delete_topics([cfg.topic, cfg.dlq_topic])
    admin.close()


def _speed_rows(cfg, day: str) -> dict:
    with writer_session(cfg) as session:
        rows = []
        for dim in ("placement", "page", "banner"):
            rows += session.execute(
                "SELECT * FROM speed_stats WHERE dimension=%s AND granularity='hour' AND "
                "bucket=%s", (dim, day))
    return {(r.dimension, r.dim_id, "hour", int(r.period_start.replace(tzinfo=UTC)
                                                   .timestamp())): r for r in rows}


def _placement_total(cfg, day: str) -> int:
    return sum(r.views + r.clicks for k, r in _speed_rows(cfg, day).items()
               if k[0] == "placement")


def _exact_hourly(files: list[Path]) -> dict:
    import duckdb

    con = duckdb.connect()
    load_events(con, files)
    return {k: v for k, v in compute_stats(con).items() if k[2] == "hour"}


def _assert_realtime_equals_exact(cfg, day: str, files: list[Path]) -> None:
    expected = _exact_hourly(files)
    got = _speed_rows(cfg, day)
    assert set(got) == set(expected)
    for key, (views, clicks, users) in expected.items():
        row = got[key]
        assert (row.views, row.clicks) == (views, clicks), key
        assert abs(row.distinct_users - users) <= 3 * 0.016 * users + 1, key


def _archive_ids(spark, cfg) -> list[str]:
    root = cfg.data_dir / "master" / "stream"
    if not any(root.glob("date=*/hour=*/*.parquet")):  # before the archive's first batch
        return []
    return [r.event_id for r in spark.read.parquet(str(root)).select("event_id").collect()]


def _generate(tmp_path, start: datetime, seed: int) -> list[Path]:
    return generate(out_dir=tmp_path / "landing", n_events=3000, n_banners=5, n_pages=6,
                    n_batches=2, n_users=800, start=start, seed=seed, event_id=True,
                    skew=1.0, quiet=True)


@pytest.mark.parametrize("fault", ["kill_stream", "restart_broker"])
def test_exactly_once_through_a_crash(stack, spark, stream_cfg, tmp_path, fault):
    day = "2026-04-01" if fault == "kill_stream" else "2026-04-02"
    files = _generate(tmp_path, datetime.fromisoformat(f"{day}T10:00+00:00"), seed=21)
    total = sum(1 for f in files for _ in f.open()) - len(files)
    produce(files, topic=stream_cfg.topic, bootstrap=stack.kafka_bootstrap, progress=False)
    stream = StreamProcess(stream_cfg, tmp_path / "stream.log", "--max-offsets-per-trigger", "1500")
    stream.start()
    try:
        _wait(lambda: 0 < _placement_total(stream_cfg, day) < total, 240,
              "the first micro-batches", stream)
        if fault == "kill_stream":
            stream.kill()
            stream.start()
        else:
            kafka = Kafka(stack)
            manager.stop(kafka)
            time.sleep(5)
            manager.start(kafka, timeout=120)
        _wait(lambda: _placement_total(stream_cfg, day) == total, 300,
              "the realtime view to count every event", stream)
        _wait(lambda: len(_archive_ids(spark, stream_cfg)) >= total, 120, "the archive", stream)
        _assert_realtime_equals_exact(stream_cfg, day, files)
        ids = _archive_ids(spark, stream_cfg)
        assert len(ids) == len(set(ids)) == total
    finally:
        assert stream.stop() == 0, stream.log.read_text()[-3000:]


def test_dead_letters_and_late_events(stack, spark, stream_cfg, tmp_path):
    day = "2026-04-03"
    files = _generate(tmp_path, datetime.fromisoformat(f"{day}T10:00+00:00"), seed=22)
    good = json.dumps({"event_id": "ok-1", "timestamp": 1775210400, "event_type": 0,
                       "banner_id": "banner0", "placement_id": "placement0",
                       "page_id": "page0", "user_id": "user000001"})

    def variant(**changes) -> bytes:
        record = json.loads(good)
        record.update(changes)
        for key in [k for k, v in changes.items() if v is ...]:
            del record[key]
        return json.dumps(record).encode()

    bad = {
        b"not json at all": "not valid JSON",
        b"\xff\xfe\x00garbage": "invalid UTF-8",
        b"[1, 2, 3]": "not a JSON object",
        b"": "not valid JSON",
        variant(event_id="d1", user_id=...): "missing user_id",
        variant(event_id="d2", timestamp="1775210400"): "non-integer timestamp",
        variant(event_id="d3", timestamp=1775210400.5): "non-integer timestamp",
        variant(event_id="d4", event_type=2): "event_type not 0/1",
        variant(event_id="d5", event_type="1"): "event_type is not an integer",
        variant(event_id="d6", user_id=""): "empty user_id",
        variant(event_id="d7", banner_id=7): "banner_id is not a string",
        variant(event_id="d8", timestamp=1775210400000): "timestamp out of range",
        variant(event_id="d9", page_id=None): "missing page_id",
        variant(event_id=""): "empty event_id",
    }
    producer = KafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    for payload in bad:
        producer.send(stream_cfg.topic, payload)
    producer.flush()
    produce(files, topic=stream_cfg.topic, bootstrap=stack.kafka_bootstrap, progress=False)
    total = sum(1 for f in files for _ in f.open()) - len(files)
    stream = StreamProcess(stream_cfg, tmp_path / "stream.log", "--watermark", "10 minutes")
    stream.start()
    try:
        _wait(lambda: _placement_total(stream_cfg, day) == total, 300,
              "valid events around the dead letters", stream)
        _assert_realtime_equals_exact(stream_cfg, day, files)
        _wait(lambda: (read_status(stream_cfg) or {}).get("dlq_count") == len(bad), 60,
              "dead-letter counts", stream)
        consumer = KafkaConsumer(stream_cfg.dlq_topic, bootstrap_servers=stack.kafka_bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=5000)
        letters = {m.value: dict(m.headers)["reason"].decode() for m in consumer}
        consumer.close()
        assert letters == bad

        # The watermark now stands near the end of the produced hours: events from 08:15 and
        # 09:xx are later than it. They must be archived, not counted live, and counted late
        # per hour (a late duplicate is a late message too: Spark drops it as late).
        def ts(hhmm: str) -> int:
            return int(datetime.fromisoformat(f"{day}T{hhmm}+00:00").timestamp())

        for event_id, at in (("late-1", "09:30"), ("late-2", "09:59"), ("late-1", "09:30"),
                             ("late-3", "08:15")):
            producer.send(stream_cfg.topic, variant(event_id=event_id, timestamp=ts(at)))
        producer.flush()
        expected = {f"{day}T08:00:00+00:00": 1, f"{day}T09:00:00+00:00": 3}
        _wait(lambda: (read_status(stream_cfg) or {}).get("late_by_hour") == expected, 120,
              f"late events counted per hour as {expected}", stream)
        status = read_status(stream_cfg)
        assert (status["late_count"], status["late_unattributed"]) == (4, 0)
        with writer_session(stream_cfg) as session:
            late_rows = session.execute(
                "SELECT period_start, events FROM speed_late_events WHERE bucket=%s", (day,))
            in_db: dict[str, int] = {}
            for r in late_rows:
                hour = r.period_start.replace(tzinfo=UTC).isoformat()
                in_db[hour] = in_db.get(hour, 0) + r.events
        assert in_db == expected
        _wait(lambda: {"late-1", "late-2", "late-3"} <= set(_archive_ids(spark, stream_cfg)),
              60, "late events archived")
        assert not [k for k in _speed_rows(stream_cfg, day) if k[3] in (ts("08:00"), ts("09:00"))]
    finally:
        producer.close()
        assert stream.stop() == 0, stream.log.read_text()[-3000:]


def test_canonical_fast_path_and_full_json_parse_agree(spark):
    """Messages in our producers' exact byte form skip the JSON parse; the answer (reason and
    fields) must be the same as the full parse's for valid and invalid ones alike."""
    from adstats.events import CANONICAL_JSON_PATTERN, parse_json_events

    good = {"event_id": "e1", "timestamp": 1775210400, "event_type": 1, "banner_id": "banner0",
            "placement_id": "placement0", "page_id": "page0", "user_id": "user000001"}

    def canonical(**changes) -> bytes:
        return json.dumps({**good, **changes}, separators=(",", ":"),
                          ensure_ascii=False).encode()

    messages = [
        canonical(),
        canonical(user_id="ünïcødé-用户"),
        canonical(event_type=0, timestamp=946684800),
        canonical(event_id=""), canonical(user_id="   "), canonical(page_id=" p "),
        canonical(event_type=2), canonical(event_type=-1),
        canonical(timestamp=4102444800), canonical(timestamp=946684799),
        canonical(timestamp=0), canonical(timestamp=10**25),  # overflows a long
        canonical(banner_id='with "quote"'), canonical(banner_id="tab\there"),
        canonical(timestamp=1775210400.5), canonical(banner_id=7),
        json.dumps(good).encode(),  # another producer's spacing: full path, still valid
        canonical()[:-1] + b',"extra":1}',
        canonical().replace(b'"timestamp":1775210400', b'"timestamp":01775210400'),
        canonical() + b" ", canonical() + b"\n", canonical() + b"\r\n",
        canonical().replace(b'"user000001"', b'"user000001\n"'),
        b"\xff" + canonical()[1:],
    ]
    frame = spark.createDataFrame([(i, m) for i, m in enumerate(messages)], "n int, value binary")
    fast = {r["n"]: r.asDict() for r in parse_json_events(frame, keep=("n",)).collect()}
    full = {r["n"]: r.asDict() for r in
            parse_json_events(frame, keep=("n",), fast_path=False).collect()}
    assert fast == full
    assert fast[0]["_reason"] is None and fast[1]["user_id"] == "ünïcødé-用户"
    assert [fast[i]["_reason"] for i in (3, 6, 8)] == [
        "empty event_id", "event_type not 0/1", "timestamp out of range"]
    assert fast[11]["_reason"] is not None
    assert re.fullmatch(CANONICAL_JSON_PATTERN.replace("\\z", ""), canonical().decode())


def test_late_batches_summed_per_hour(tmp_path):
    """Pure pieces of the late counter: offset log parsing, totals, old file format."""
    from speed_layer.late import LateBatch, _offset_map, batch_watermark_ms, hours_total

    offsets = tmp_path / "offsets"
    offsets.mkdir()
    (offsets / "4").write_text('v1\n{"batchWatermarkMs":1775210400000,"batchTimestampMs":1,'
                               '"conf":{}}\n{"t":{"0":10}}\n')
    assert batch_watermark_ms(tmp_path, 4) == 1775210400000
    assert batch_watermark_ms(tmp_path, -1) == 0  # before the first batch
    assert batch_watermark_ms(tmp_path, 3) is None  # purged
    batches = {
        "q/4": LateBatch(3, hours={"2026-04-03T09:00:00+00:00": 2,
                                   "2026-04-03T08:00:00+00:00": 1}),
        "q/9": LateBatch(2, hours={"2026-04-03T09:00:00+00:00": 2}),
        "q/12": LateBatch(5),  # not attributed yet
        "old/1": LateBatch.from_json(7),
    }
    assert hours_total(batches) == (
        {"2026-04-03T08:00:00+00:00": 1, "2026-04-03T09:00:00+00:00": 4}, 12)
    assert batches["old/1"].error
    assert LateBatch.from_json(batches["q/4"].to_json()) == batches["q/4"]
    # A partition new in the batch starts at the earliest offset.
    assert _offset_map({"t": {"0": 5}}, {"t": {"0": 9, "1": 3}}) == {"t": {"0": 5, "1": -2}}


def test_status_lists_late_events_by_hour():
    from speed_layer.stream import format_status

    text = format_status({"updated_at": "2026-04-03T12:00:00+00:00", "pid": 1, "late_count": 7,
                          "late_by_hour": {"2026-04-03T08:00:00+00:00": 1,
                                           "2026-04-03T09:00:00+00:00": 4},
                          "late_unattributed": 2, "queries": {}})
    assert "2026-04-03T09:00:00+00:00         4" in text
    assert "not attributed to an hour: 2" in text
    assert "no status yet" in format_status(None)


def test_late_counter_folds_old_batches_into_totals(spark, tmp_path):
    """Done batches of an older checkpoint or far behind the newest are folded into running
    totals (the file stays small); the summary is the same before and after, and on reload."""
    from adstats.config import settings
    from speed_layer.late import KEEP_BATCHES, LateBatch, LateCounter

    h8, h9 = "2026-04-03T08:00:00+00:00", "2026-04-03T09:00:00+00:00"
    file = tmp_path / "late-by-batch.json"
    file.write_text(json.dumps({
        "q/1": LateBatch(2, hours={h9: 2}).to_json(),
        f"q/{KEEP_BATCHES + 5}": LateBatch(1, hours={h8: 1}).to_json(),
        "old/3": LateBatch(4, error="offsets purged", final=True).to_json(),
        "7": 5,  # the format before per-hour attribution
    }))

    def counter() -> LateCounter:
        return LateCounter(spark, settings(), tmp_path, file, lambda key, hours: None)

    first = counter()
    before = first.summary()
    assert before == {"late_count": 12, "late_by_hour": {h8: 1, h9: 2}, "late_unattributed": 9}
    with first._lock:
        first._fold("q")
        first._save()
    assert set(first.batches) == {f"q/{KEEP_BATCHES + 5}"}
    assert first.summary() == before == counter().summary()
