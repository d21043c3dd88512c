"""docker-compose.yml describes the same services as the local stack (no Docker engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from adstats.stack.services import all_services

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_same_services_and_ports_as_local_stack(monkeypatch):
    for var in ("ADSTATS_KAFKA_PORT", "ADSTATS_CASSANDRA_PORT", "ADSTATS_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(var, raising=False)
    from adstats.config import settings

    services = _compose()["services"]
    for svc in all_services(settings()):
        port = svc.address.rsplit(":", 1)[1]
        assert f"127.0.0.1:{port}:{port}" in services[svc.name]["ports"]


def test_versions_match_the_poms():
    services = _compose()["services"]
    poms = Path(__file__).resolve().parents[1] / "adstats" / "stack" / "poms"
    kafka_version = services["kafka"]["image"].split(":")[1]
    cassandra_version = services["cassandra"]["image"].split(":")[1]
    assert f"<kafka.version>{kafka_version}</kafka.version>" in (poms / "kafka/pom.xml").read_text()
    assert (f"<cassandra.version>{cassandra_version}</cassandra.version>"
            in (poms / "cassandra/pom.xml").read_text())


def test_topics_created_like_stack_up():
    command = " ".join(_compose()["services"]["kafka-topics"]["command"])
    assert "--topic ad-events --partitions 4" in command
    assert "--topic ad-events-dlq" in command


@pytest.mark.skipif(
    shutil.which("docker") is None
    or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0,
    reason="docker compose client not installed",
)
def test_docker_compose_config_accepts_file():
    out = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
