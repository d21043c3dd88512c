"""``adstats produce`` (utils/produce_events.py): reading, validation and ordering without Kafka,
then end to end against the real broker of the test stack."""

from __future__ import annotations

import csv
import json
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from adstats.events import (
    CSV_FIELDS,
    EVENT_ID,
    derived_event_id_py,
    rejection_reason_py,
    to_json_record,
)
from utils import produce_events as pe
from utils.generate_sample_data import generate

START = datetime(2024, 1, 1)
HEADER = "event_id,timestamp,event_type,banner_id,placement_id,page_id,user_id"


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def expected_messages(paths: list[Path]) -> list[dict]:
    """The valid rows of ``paths`` as Kafka JSON objects, read independently with ``csv``."""
    out = []
    for path in paths:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        seen: Counter = Counter()
        for row in body:
            if not row or len(row) != len(header):
                continue
            record = dict(zip(header, row, strict=True))
            if EVENT_ID not in record:
                key = tuple(record[n] for n in CSV_FIELDS)
                record[EVENT_ID] = derived_event_id_py(path.name, record, seen[key])
                seen[key] += 1
            if rejection_reason_py(record) is None:
                out.append(to_json_record(record))
    return out


def _canon(objs) -> Counter:
    return Counter(json.dumps(o, sort_keys=True) for o in objs)


# --------------------------------------------------------------------------- unit tests
def test_hand_written_file_reasons_and_line_numbers(tmp_path):
    text = "\n".join([
        HEADER,                                                   # 1
        "e1,1704067200,0,banner1,placement1,page1,userA",         # 2 valid (fast)
        "e2,12.5x,0,banner1,placement1,page1,userA",              # 3 non-integer timestamp
        "",                                                       # 4 blank: ignored
        "e3,1704067201,1,banner1,placement1,page1",               # 5 wrong number of fields
        "e4,1704067202,2,banner1,placement1,page1,userA",         # 6 event_type not 0/1
        "e5,99,0,banner1,placement1,page1,userA",                 # 7 timestamp out of range
        "e6,1704067203,0,banner1,placement1,page1,   ",           # 8 empty user_id
        "garbage line",                                           # 9 wrong number of fields
        'e7, 01704067204 ,1,banner1,"place""x",page1,üser',       # 10 valid (slow path)
        ",1704067205,0,banner1,placement1,page1,userA",           # 11 empty event_id
        "e8,1704067206,0,banner1,placement1,page1,userA,extra",   # 12 wrong number of fields
        "e9,1704067207,1,b a,placement1,page1,userB\r",           # 13 valid (CRLF, space)
        "",
    ])
    events = pe.read_file(_write(tmp_path / "hand.csv", text))
    assert events.examples == [
        (3, "non-integer timestamp"), (5, pe.WRONG_FIELDS), (6, "event_type not 0/1"),
        (7, "timestamp out of range"), (8, "empty user_id"),
    ]
    assert events.skipped == Counter({
        pe.WRONG_FIELDS: 3, "non-integer timestamp": 1, "event_type not 0/1": 1,
        "timestamp out of range": 1, "empty user_id": 1, "empty event_id": 1,
    })
    values = [json.loads(v) for v in events.values.to_pylist()]
    assert [v["event_id"] for v in values] == ["e1", "e7", "e9"]
    assert values[1] == {"event_id": "e7", "timestamp": 1704067204, "event_type": 1,
                         "banner_id": "banner1", "placement_id": 'place"x',
                         "page_id": "page1", "user_id": "üser"}
    assert events.keys.to_pylist() == [b"userA", "üser".encode(), b"userB"]
    assert events.timestamps.tolist() == [1704067200, 1704067204, 1704067207]


def test_generated_files_match_independent_read(tmp_path):
    with_ids = generate(tmp_path / "a", n_events=3000, n_batches=2, start=START, seed=1,
                        event_id=True, duplicate_fraction=0.01, late_fraction=0.02,
                        malformed_fraction=0.01)
    without = generate(tmp_path / "b", n_events=3000, n_batches=2, start=START, seed=2,
                       malformed_fraction=0.01, late_fraction=0.02)
    paths = with_ids + without
    events = pe.load_events([tmp_path / "a", tmp_path / "b"])
    expected = expected_messages(paths)
    rows = sum(len(p.read_text().splitlines()) - 1 for p in paths)
    assert events.files == 4
    assert len(events) == len(expected)
    assert events.skipped == rows - len(expected) == 4 * 30
    # Byte-exact: the Arrow fast path formats like json.dumps(to_json_record(...)).
    compact = Counter(json.dumps(o, separators=(",", ":")).encode() for o in expected)
    assert Counter(events.values.to_pylist()) == compact
    assert events.timestamps.tolist() == sorted(events.timestamps.tolist())
    assert [json.loads(v)["timestamp"] for v in events.values.to_pylist()] == \
        events.timestamps.tolist()
    assert events.keys.to_pylist() == [
        json.loads(v)["user_id"].encode() for v in events.values.to_pylist()
    ]
    assert len(events.skipped_examples) == 5
    for name, line, reason in events.skipped_examples:  # each names its line's real fault
        path = next(p for p in paths if p.name == name)
        row = next(csv.reader([path.read_text().splitlines()[line - 1]]))
        header = next(csv.reader([path.read_text().splitlines()[0]]))
        if len(row) != len(header):
            assert reason == pe.WRONG_FIELDS
        else:
            record = dict(zip(header, row, strict=True))
            record.setdefault(EVENT_ID, "derived")
            assert rejection_reason_py(record) == reason


def test_derived_ids_deterministic_and_distinct_for_identical_rows(tmp_path):
    row = "1704067200,0,banner1,placement1,page1,userA"
    other = "1704067201,1,banner2,placement1,page1,userB"
    path = _write(tmp_path / "dup.csv", "\n".join([",".join(CSV_FIELDS), row, other, row, row]))
    first = pe.read_file(path)
    again = pe.read_file(path)
    ids = [json.loads(v)["event_id"] for v in first.values.to_pylist()]
    assert ids == [json.loads(v)["event_id"] for v in again.values.to_pylist()]
    assert len(set(ids)) == 4
    record = dict(zip(CSV_FIELDS, row.split(","), strict=True))
    assert ids[0] == derived_event_id_py("dup.csv", record, 0)
    assert ids[2] == derived_event_id_py("dup.csv", record, 1)
    assert ids[3] == derived_event_id_py("dup.csv", record, 2)
    # The file name is part of the id: the same rows elsewhere are other events.
    copy = _write(tmp_path / "copy.csv", path.read_text())
    assert not set(ids) & {json.loads(v)["event_id"] for v in pe.read_file(copy).values.to_pylist()}


def test_timestamp_order_across_files_is_stable(tmp_path):
    a = _write(tmp_path / "a.csv", "\n".join([
        HEADER, "a1,1704067205,0,b,p,g,u1", "a2,1704067201,0,b,p,g,u1",
        "a3,1704067203,0,b,p,g,u2"]))
    b = _write(tmp_path / "b.csv", "\n".join([
        HEADER, "b1,1704067203,1,b,p,g,u3", "b2,1704067200,1,b,p,g,u1",
        "b3,1704067205,1,b,p,g,u1"]))
    events = pe.load_events([b, a])  # given order decides ties
    ids = [json.loads(v)["event_id"] for v in events.values.to_pylist()]
    assert ids == ["b2", "a2", "b1", "a3", "b3", "a1"]
    assert events.timestamps.tolist() == [1704067200, 1704067201, 1704067203, 1704067203,
                                          1704067205, 1704067205]


def test_directories_sorted_duplicates_dropped_errors(tmp_path):
    for name in ("b.csv", "a.csv", "notes.txt"):
        _write(tmp_path / "d" / name, HEADER + "\n")
    found = pe.find_csv_files([tmp_path / "d", tmp_path / "d" / "a.csv"])
    assert [p.name for p in found] == ["a.csv", "b.csv"]
    with pytest.raises(pe.InputError, match="no such file"):
        pe.find_csv_files([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(pe.InputError, match="no CSV files"):
        pe.find_csv_files([tmp_path / "empty"])


def test_empty_and_header_only_files(tmp_path):
    empty = _write(tmp_path / "empty.csv", "")
    header = _write(tmp_path / "header.csv", HEADER + "\n")
    events = pe.load_events([empty, header])
    assert len(events) == 0 and events.skipped == 0


def test_missing_column_rejects_every_row(tmp_path):
    path = _write(tmp_path / "x.csv", "timestamp,event_type,banner_id\n1704067200,0,b1\n")
    events = pe.read_file(path)
    assert len(events.timestamps) == 0
    assert events.skipped == Counter({"missing placement_id": 1})


def test_dry_run_main(tmp_path, capsys):
    generate(tmp_path, n_events=500, n_batches=1, start=START, seed=3, malformed_fraction=0.02)
    assert pe.main([str(tmp_path), "--dry-run", "-q"]) == 0
    captured = capsys.readouterr()
    assert "dry run: 490 valid events in 1 files, 10 skipped" in captured.out
    assert "skipped 10 invalid rows" in captured.err


@pytest.mark.parametrize("argv", [
    ["--rate", "0", "x.csv"], ["--rate", "abc", "x.csv"], ["--speedup", "-1", "x.csv"],
    ["--timeout", "0", "x.csv"], ["--rate", "inf", "x.csv"], [],
])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        pe.main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bad_paths_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        pe.main([str(tmp_path / "nope.csv")])
    assert exc.value.code == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        pe.main([str(tmp_path)])
    assert exc.value.code == 2
    assert "no CSV files found" in capsys.readouterr().err


def test_library_rejects_bad_numbers(tmp_path):
    with pytest.raises(ValueError, match="rate"):
        pe.produce([tmp_path], rate=0)
    with pytest.raises(ValueError, match="speedup"):
        pe.produce([tmp_path], speedup=float("nan"))


def test_progress_line_format():
    import io

    stream = io.StringIO()
    bar = pe._Progress(200, True, stream)
    bar.update(50, force=True)
    bar.close()
    assert "50/200" in stream.getvalue() and "25.0%" in stream.getvalue()
    quiet = io.StringIO()
    pe._Progress(200, False, quiet).update(50, force=True)
    assert quiet.getvalue() == ""


def test_partitions_match_kafka_default_partitioner():
    import pyarrow as pa
    from kafka.partitioner.default import murmur2

    raw = [b"u1", b"u2", "ü".encode(), b"u1"]
    got = pe._partitions_of(pa.chunked_array([pa.array(raw, pa.large_binary())]), [0, 1, 2, 3])
    assert got.tolist() == [(murmur2(k) & 0x7FFFFFFF) % 4 for k in raw]


# --------------------------------------------------------------------------- against Kafka
@pytest.fixture
def topic(stack):
    """A fresh 4-partition topic, deleted afterwards (a new client: Kafka may have restarted)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    name = f"test-produce-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(name, 4, 1)])
        deadline = time.monotonic() + 30  # creation returns before every view has the topic
        while name not in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        admin.close()
    yield name
    admin = KafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    try:
        admin.delete_topics([name])
    finally:
        admin.close()


def consume_all(cfg, topic: str, expected: int, timeout: float = 60) -> list:
    """Every message of ``topic`` (all partitions, from the start), up to the end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka_bootstrap, enable_auto_commit=False)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        end = consumer.end_offsets(parts)
        assert sum(end.values()) == expected
        messages: list = []
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                messages.extend(batch)
        return messages
    finally:
        consumer.close()


def test_produce_end_to_end(stack, topic, tmp_path, capsys):
    paths = generate(tmp_path / "ids", n_events=2000, n_batches=2, start=START, seed=11,
                     event_id=True, duplicate_fraction=0.01, late_fraction=0.02,
                     malformed_fraction=0.01)
    paths += generate(tmp_path / "plain", n_events=2000, n_batches=2, start=START, seed=12,
                      late_fraction=0.02, malformed_fraction=0.01)
    expected = expected_messages(paths)
    rc = pe.main([str(tmp_path / "ids"), str(tmp_path / "plain"), "--topic", topic, "-q"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"{len(expected):,} events sent to {topic}, 80 skipped" in out.out

    messages = consume_all(stack, topic, len(expected))
    values = [json.loads(m.value) for m in messages]
    assert _canon(values) == _canon(expected)
    for m, v in zip(messages, values, strict=True):
        assert m.key == v["user_id"].encode()
        assert set(v) == {"event_id", "timestamp", "event_type", "banner_id", "placement_id",
                          "page_id", "user_id"}
        assert isinstance(v["timestamp"], int) and isinstance(v["event_type"], int)
    by_partition: dict[int, list] = {}
    partition_of_user: dict[str, int] = {}
    for m, v in zip(messages, values, strict=True):
        by_partition.setdefault(m.partition, []).append((m.offset, v["timestamp"]))
        assert partition_of_user.setdefault(v["user_id"], m.partition) == m.partition
    assert len(by_partition) == 4
    for rows in by_partition.values():
        stamps = [ts for _, ts in sorted(rows)]
        assert stamps == sorted(stamps)


def test_rate_and_speedup_send_everything(stack, topic, tmp_path):
    lines = [HEADER] + [f"r{i},{1704067200 + i // 10},{i % 2},b,p,g,u{i % 7}" for i in range(300)]
    path = _write(tmp_path / "small.csv", "\n".join(lines))
    report = pe.produce([path], topic=topic, rate=500, progress=False)
    assert (report.sent, report.total, report.skipped) == (300, 300, 0)
    # 30 s of event time at 300x: about 0.1 s; timing is never asserted.
    report = pe.produce([path], topic=topic, speedup=300, rate=5000, progress=False)
    assert report.sent == 300
    assert len(consume_all(stack, topic, 600)) == 600


def test_missing_topic_and_unreachable_broker(stack, tmp_path, capsys):
    path = _write(tmp_path / "one.csv", HEADER + "\ne1,1704067200,0,b,p,g,u\n")
    assert pe.main([str(path), "--topic", "no-such-topic-here", "-q"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert pe.main([str(path), "--bootstrap", "127.0.0.1:9", "--timeout", "2", "-q"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Kafka at 127.0.0.1:9" in err and "nothing was sent" in err


def test_broker_outage_fails_with_confirmed_count(stack, topic, tmp_path):
    """Kafka stops answering mid-replay (its JVM is frozen with SIGSTOP; unlike a stop and
    restart this leaves the session's broker process alone): exit 1 after --timeout, naming how
    many events were confirmed sent; those survive in the topic once Kafka answers again."""
    import os
    import signal

    from kafka import KafkaConsumer, TopicPartition

    from adstats.stack import manager
    from adstats.stack.services import Kafka

    n = 4000
    lines = [HEADER] + [f"o{i},{1704067200 + i},0,b,p,g,u{i % 13}" for i in range(n)]
    path = _write(tmp_path / "outage.csv", "\n".join(lines))
    result: dict = {}

    def run() -> None:
        try:
            result["report"] = pe.produce([path], topic=topic, rate=1000, timeout=4,
                                          progress=False)
        except pe.ProduceError as exc:
            result["error"] = exc

    pid = manager.running_pid(Kafka(stack))
    assert pid is not None
    worker = threading.Thread(target=run)
    worker.start()
    try:
        time.sleep(1.0)
        os.kill(pid, signal.SIGSTOP)
        worker.join(timeout=45)
    finally:
        os.kill(pid, signal.SIGCONT)
    worker.join(timeout=30)
    assert not worker.is_alive()
    error = result.get("error")
    assert error is not None, result
    assert error.exit_code == 1
    sent = error.report.sent
    assert 0 < sent < n
    message = str(error)
    assert "did not acknowledge events within 4 s" in message
    assert f"{sent:,} of {n:,} events were confirmed sent" in message
    assert f"the other {n - sent:,} were NOT sent" in message
    # Every acknowledged event is in the topic (acks=all).
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        stored = sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()
    assert stored >= sent
