"""Pure functions of the core: settings from the environment, schema text, Spark settings."""

from __future__ import annotations

import pytest

from adstats.config import settings
from serving_layer.schema import role_statements, schema_statements


def test_defaults_point_at_loopback(monkeypatch):
    for var in ("ADSTATS_KAFKA_PORT", "ADSTATS_CASSANDRA_PORT", "ADSTATS_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(var, raising=False)
    cfg = settings()
    assert cfg.kafka_bootstrap == "127.0.0.1:9092"
    assert cfg.cassandra_hosts == ("127.0.0.1",)
    assert cfg.cassandra_port == 9042


def test_bad_port_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("ADSTATS_KAFKA_PORT", "ninety")
    with pytest.raises(ValueError, match="ADSTATS_KAFKA_PORT must be an integer"):
        settings()


def test_cluster_addresses_come_from_env(monkeypatch):
    monkeypatch.setenv("ADSTATS_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("ADSTATS_CASSANDRA_HOSTS", "c1,c2,c3")
    cfg = settings()
    assert cfg.kafka_bootstrap == "k1:9092,k2:9092"
    assert cfg.cassandra_hosts == ("c1", "c2", "c3")


def test_schema_statements_fill_keyspace(monkeypatch):
    monkeypatch.setenv("ADSTATS_KEYSPACE", "ks_x")
    stmts = schema_statements(settings())
    assert stmts[0].startswith("CREATE KEYSPACE IF NOT EXISTS ks_x")
    assert {s.split("(")[0].split()[-1] for s in stmts[1:]} == {
        "ks_x.batch_stats", "ks_x.batch_periods", "ks_x.speed_stats", "ks_x.speed_late_events",
        "ks_x.reconciliation"}


def test_bad_keyspace_rejected(monkeypatch):
    monkeypatch.setenv("ADSTATS_KEYSPACE", "x; DROP")
    with pytest.raises(ValueError, match="not a valid"):
        schema_statements(settings())


def test_reader_role_gets_select_only():
    grants = [s for s, _ in role_statements(settings()) if s.startswith("GRANT")]
    reader = settings().reader_user
    assert [g for g in grants if g.endswith(reader)] == [
        f"GRANT SELECT ON KEYSPACE {settings().keyspace} TO {reader}"]


def test_spark_conf_has_connector_jars_and_utc(monkeypatch):
    from adstats.spark import spark_conf

    monkeypatch.setenv("ADSTATS_SPARK_CONF", "spark.executor.memory=3g")
    conf = spark_conf(settings(), "t")
    assert "spark-sql-kafka-0-10_2.13" in conf["spark.jars"]
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.executor.memory"] == "3g"


def test_stream_session_uses_rocksdb_state_and_its_own_partitions(monkeypatch):
    from adstats.spark import STREAM_PARTITIONS_ENV, spark_conf

    monkeypatch.delenv(STREAM_PARTITIONS_ENV, raising=False)
    batch, stream = spark_conf(settings(), "b"), spark_conf(settings(), "s", streaming=True)
    assert "stateStore.providerClass" not in " ".join(batch)
    assert stream["spark.sql.streaming.stateStore.providerClass"].endswith(
        "RocksDBStateStoreProvider")
    assert stream["spark.sql.shuffle.partitions"] == "2"
    # The realtime query's scheduler pool is served before the background queries'.
    assert "spark.scheduler.mode" not in batch and stream["spark.scheduler.mode"] == "FAIR"
    assert stream["spark.scheduler.allocation.file"].endswith("spark-scheduler-pools.xml")
    monkeypatch.setenv(STREAM_PARTITIONS_ENV, "16")
    assert spark_conf(settings(), "s", streaming=True)["spark.sql.shuffle.partitions"] == "16"
