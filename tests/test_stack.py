"""The local stack against the real servers: Kafka, Cassandra (with roles) and Spark's connector."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cassandra import Unauthorized
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from adstats.stack import manager
from adstats.stack.services import Kafka
from serving_layer.cassandra_session import reader_session, writer_session
from serving_layer.schema import init_db


def _produce(cfg, key: str, value: dict) -> None:
    producer = KafkaProducer(bootstrap_servers=cfg.kafka_bootstrap, acks="all")
    try:
        producer.send(cfg.topic, key=key.encode(), value=json.dumps(value).encode()).get(30)
    finally:
        producer.close()


def _consume_value(cfg, wanted_id: str, timeout: float = 30) -> dict | None:
    consumer = KafkaConsumer(
        cfg.topic, bootstrap_servers=cfg.kafka_bootstrap, auto_offset_reset="earliest",
        group_id=f"test-{uuid.uuid4()}", consumer_timeout_ms=2000,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer:
                value = json.loads(msg.value)
                if value.get("event_id") == wanted_id:
                    return value
        return None
    finally:
        consumer.close()


def test_topics_exist_with_partitions(stack):
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    try:
        assert len(consumer.partitions_for_topic(stack.topic)) == 4
        assert consumer.partitions_for_topic(stack.dlq_topic)
    finally:
        consumer.close()


def test_kafka_produce_and_consume(stack):
    event = {"event_id": str(uuid.uuid4()), "timestamp": 1767272400, "event_type": 0,
             "banner_id": "banner1", "placement_id": "placement2", "page_id": "page3",
             "user_id": "aB3dE5gH7j"}
    _produce(stack, event["user_id"], event)
    assert _consume_value(stack, event["event_id"]) == event


def test_writer_role_writes_and_reads(stack):
    with writer_session(stack) as session:
        session.execute(
            "INSERT INTO speed_stats (dimension, granularity, bucket, period_start, dim_id,"
            " views, clicks) VALUES ('placement', 'hour', 'test', '2026-01-01 13:00:00+0000',"
            " 'placement0', 7, 2)"
        )
        row = session.execute(
            "SELECT views, clicks FROM speed_stats WHERE dimension = 'placement'"
            " AND granularity = 'hour' AND bucket = 'test'"
        ).one()
    assert (row.views, row.clicks) == (7, 2)


def test_reader_role_is_refused_writes_but_reads(stack):
    with reader_session(stack) as session:
        session.execute("SELECT * FROM batch_periods LIMIT 1")
        with pytest.raises(Unauthorized):
            session.execute(
                "INSERT INTO batch_periods (granularity, bucket, period_start, run_id)"
                " VALUES ('hour', 'x', '2026-01-01 13:00:00+0000', 'r')"
            )


def test_db_init_is_idempotent(stack):
    init_db(stack, quiet=True)
    init_db(stack, quiet=True)


def test_stack_up_again_says_already_running(stack, capsys):
    timings = manager.up(stack)
    assert timings == {"kafka": 0.0, "cassandra": 0.0}
    assert "already running" in capsys.readouterr().err


def test_status_cli_reports_up(stack):
    out = subprocess.run(
        [sys.executable, "-m", "adstats.cli", "stack", "status", "--json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    states = {row["service"]: row["state"] for row in json.loads(out.stdout)}
    assert states == {"kafka": "up", "cassandra": "up"}


def test_spark_reads_topic_with_connector(stack, spark):
    event_id = str(uuid.uuid4())
    _produce(stack, "spark-user", {"event_id": event_id})
    df = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", stack.kafka_bootstrap)
        .option("subscribe", stack.topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    values = [r.value.decode() for r in df.select("value").collect()]
    assert any(event_id in v for v in values)


def test_kafka_stops_by_pid_and_restarts(stack):
    kafka = Kafka(stack)
    pid = manager.running_pid(kafka)
    assert pid is not None
    assert manager.stop(kafka) is True
    assert not Path(f"/proc/{pid}").exists()
    assert manager.running_pid(kafka) is None
    manager.start(kafka, timeout=120)
    # Data survives the restart: the topics are still there with their partitions.
    consumer = KafkaConsumer(bootstrap_servers=stack.kafka_bootstrap)
    try:
        partitions = consumer.partitions_for_topic(stack.topic)
        assert partitions is not None and len(partitions) == 4
    finally:
        consumer.close()
    assert TopicPartition(stack.topic, 0)
