"""Settings from ``ADSTATS_*`` environment variables, with defaults that point at the local stack.

Every component reads its addresses from here, so the same code runs against a Spark cluster,
a Kafka cluster or a Cassandra ring by setting variables, not by editing code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _env_int(name: str, default: int) -> int:
    raw = _env(name, str(default))
    try:
        return int(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    """One snapshot of the configuration; read with :func:`settings`."""

    home: Path
    state_dir: Path
    data_dir: Path
    kafka_port: int
    kafka_controller_port: int
    kafka_bootstrap: str
    topic: str
    dlq_topic: str
    topic_partitions: int
    topic_replication: int
    cassandra_hosts: tuple[str, ...]
    cassandra_port: int
    cassandra_storage_port: int
    keyspace: str
    replication: str
    admin_user: str
    admin_password: str
    writer_user: str
    writer_password: str
    reader_user: str
    reader_password: str
    spark_master: str
    spark_driver_memory: str

    @property
    def jar_dir(self) -> Path:
        return self.home / "jars"

    @property
    def master_dir(self) -> Path:
        return self.data_dir / "master"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def landing_dir(self) -> Path:
        return self.data_dir / "sample_data"


def settings() -> Settings:
    """Read the environment now (tests change it between stacks)."""
    home = Path(_env("ADSTATS_HOME", str(Path.home() / ".cache" / "adstats"))).expanduser()
    kafka_port = _env_int("ADSTATS_KAFKA_PORT", 9092)
    cassandra_port = _env_int("ADSTATS_CASSANDRA_PORT", 9042)
    return Settings(
        home=home,
        state_dir=Path(_env("ADSTATS_STATE_DIR", str(home / "stack"))).expanduser(),
        data_dir=Path(_env("ADSTATS_DATA_DIR", "data")).expanduser().absolute(),
        kafka_port=kafka_port,
        kafka_controller_port=_env_int("ADSTATS_KAFKA_CONTROLLER_PORT", 9093),
        kafka_bootstrap=_env("ADSTATS_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka_port}"),
        topic=_env("ADSTATS_TOPIC", "ad-events"),
        dlq_topic=_env("ADSTATS_DLQ_TOPIC", "ad-events-dlq"),
        topic_partitions=_env_int("ADSTATS_TOPIC_PARTITIONS", 4),
        topic_replication=_env_int("ADSTATS_TOPIC_REPLICATION", 1),
        cassandra_hosts=tuple(_env("ADSTATS_CASSANDRA_HOSTS", "127.0.0.1").split(",")),
        cassandra_port=cassandra_port,
        cassandra_storage_port=_env_int("ADSTATS_CASSANDRA_STORAGE_PORT", 7000),
        keyspace=_env("ADSTATS_KEYSPACE", "adstats"),
        replication=_env(
            "ADSTATS_CASSANDRA_REPLICATION", "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        ),
        admin_user=_env("ADSTATS_CASSANDRA_ADMIN_USER", "cassandra"),
        admin_password=_env("ADSTATS_CASSANDRA_ADMIN_PASSWORD", "cassandra"),
        writer_user=_env("ADSTATS_CASSANDRA_WRITER_USER", "adstats_writer"),
        writer_password=_env("ADSTATS_CASSANDRA_WRITER_PASSWORD", "adstats_writer"),
        reader_user=_env("ADSTATS_CASSANDRA_READER_USER", "adstats_reader"),
        reader_password=_env("ADSTATS_CASSANDRA_READER_PASSWORD", "adstats_reader"),
        spark_master=_env("ADSTATS_SPARK_MASTER", "local[*]"),
        spark_driver_memory=_env("ADSTATS_SPARK_DRIVER_MEMORY", "2g"),
    )
