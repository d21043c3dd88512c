"""One real stack per test session, on test ports and in a temporary state folder.

Tests marked ``stack`` get the running Kafka + Cassandra through the ``stack`` fixture; it is
started once, on first use, and stopped at the end of the session even when tests fail. The
jar cache (``ADSTATS_HOME``) is shared with normal use so Maven resolves only once.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _port(preferred: int) -> str:
    """``preferred`` if it is free on loopback, else any free port (a second test session or
    a developer's stack may hold it)."""
    for candidate in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return str(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


# Test ports, so a developer's own stack on the default ports can keep running.
_TEST_ENV = {
    "ADSTATS_KAFKA_PORT": _port(19092),
    "ADSTATS_KAFKA_CONTROLLER_PORT": _port(19093),
    "ADSTATS_CASSANDRA_PORT": _port(19042),
    "ADSTATS_CASSANDRA_STORAGE_PORT": _port(17000),
    "ADSTATS_KEYSPACE": "adstats_test",
    "ADSTATS_SPARK_MASTER": "local[2]",
    "ADSTATS_SPARK_SHUFFLE_PARTITIONS": "4",
}
for _key, _value in _TEST_ENV.items():
    os.environ.setdefault(_key, _value)  # a caller may choose its own ports
os.environ.pop("ADSTATS_KAFKA_BOOTSTRAP", None)
os.environ.pop("ADSTATS_CASSANDRA_HOSTS", None)
_STATE = Path(tempfile.mkdtemp(prefix="adstats-test-stack-"))
os.environ["ADSTATS_STATE_DIR"] = str(_STATE / "stack")
os.environ["ADSTATS_DATA_DIR"] = str(_STATE / "data")


@pytest.fixture(scope="session")
def stack() -> Iterator:
    """The running local stack (Settings); torn down at session end, checked to leave no pid."""
    from adstats.config import settings
    from adstats.stack import manager
    from adstats.stack.services import all_services
    from serving_layer.schema import init_db

    cfg = settings()
    try:
        manager.up(cfg, timeout=240)
        init_db(cfg, quiet=True)
        yield cfg
    finally:
        pids = [p for p in (manager.running_pid(s) for s in all_services(cfg)) if p]
        manager.down(cfg)
        left = [p for p in pids if Path(f"/proc/{p}").exists()]
        assert not left, f"stack down left processes running: {left}"


@pytest.fixture(scope="session")
def spark(stack):
    """One Spark session for the whole test session (JVM start is the slow part)."""
    from adstats.spark import spark_session

    session = spark_session("adstats-tests", stack)
    yield session
    session.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that uses the stack is marked, so `pytest -m "not stack"` runs the unit tests.
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # The stack's data, logs and the tests' data dir live here; the stack is down by now.
    import shutil

    shutil.rmtree(_STATE, ignore_errors=True)
