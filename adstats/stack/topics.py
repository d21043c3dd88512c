"""Kafka topics of the pipeline: created by ``stack up`` (idempotent)."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from adstats.config import Settings


def ensure_topics(cfg: Settings) -> list[str]:
    """Create ``ad-events`` (4 partitions) and its dead-letter topic if they are missing."""
    wanted = {cfg.topic: cfg.topic_partitions, cfg.dlq_topic: 1}
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap, client_id="adstats-admin")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=n, replication_factor=cfg.topic_replication)
            for name, n in wanted.items() if name not in existing
        ]
        for topic in missing:
            try:
                admin.create_topics([topic])
            except TopicAlreadyExistsError:
                pass
        return [t.name for t in missing]
    finally:
        admin.close()
