"""Cassandra connections for the three roles: admin (schema), writer (pipeline), reader (API)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy

from adstats.config import Settings

# The driver logs a warning per connection attempt while the node is still starting up.
logging.getLogger("cassandra").setLevel(logging.ERROR)


def _cluster(cfg: Settings, user: str, password: str, connect_timeout: float) -> Cluster:
    return Cluster(
        contact_points=list(cfg.cassandra_hosts),
        port=cfg.cassandra_port,
        auth_provider=PlainTextAuthProvider(username=user, password=password),
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(
                load_balancing_policy=DCAwareRoundRobinPolicy(), request_timeout=30
            )
        },
        protocol_version=5,
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
    )


@contextmanager
def _session(
    cfg: Settings, user: str, password: str, keyspace: str | None, connect_timeout: float
) -> Iterator[Session]:
    cluster = _cluster(cfg, user, password, connect_timeout)
    try:
        yield cluster.connect(keyspace)
    finally:
        cluster.shutdown()


def admin_session(cfg: Settings, connect_timeout: float = 10) -> AbstractContextManager[Session]:
    """Superuser session (schema and roles only)."""
    return _session(cfg, cfg.admin_user, cfg.admin_password, None, connect_timeout)


def writer_session(cfg: Settings, connect_timeout: float = 10) -> AbstractContextManager[Session]:
    """The pipeline's role: reads and writes the adstats keyspace."""
    return _session(cfg, cfg.writer_user, cfg.writer_password, cfg.keyspace, connect_timeout)


def reader_session(cfg: Settings, connect_timeout: float = 10) -> AbstractContextManager[Session]:
    """The serving API's role: SELECT only."""
    return _session(cfg, cfg.reader_user, cfg.reader_password, cfg.keyspace, connect_timeout)
