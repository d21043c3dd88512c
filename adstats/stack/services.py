"""How each local service is configured, launched and probed for readiness."""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from adstats.config import Settings
from adstats.stack import jars

TEMPLATES = Path(__file__).parent / "templates"

# From Cassandra 5.0's conf/jvm17-server.options: Java 17 needs these to let Cassandra reach
# JDK internals (off-heap memory, jamm, chronicle, netty).
CASSANDRA_JVM17_FLAGS = [
    "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true",
    *(
        f"--add-exports={m}=ALL-UNNAMED"
        for m in (
            "java.base/jdk.internal.misc",
            "java.management.rmi/com.sun.jmx.remote.internal.rmi",
            "java.rmi/sun.rmi.registry",
            "java.rmi/sun.rmi.server",
            "java.sql/java.sql",
            "java.base/java.lang.ref",
            "jdk.unsupported/sun.misc",
            "jdk.compiler/com.sun.tools.javac.file",
            "jdk.attach/sun.tools.attach",
        )
    ),
    *(
        f"--add-opens={m}=ALL-UNNAMED"
        for m in (
            "java.base/java.lang.module",
            "java.base/jdk.internal.loader",
            "java.base/jdk.internal.ref",
            "java.base/jdk.internal.reflect",
            "java.base/jdk.internal.math",
            "java.base/jdk.internal.module",
            "java.base/jdk.internal.util.jar",
            "jdk.management/com.sun.management.internal",
            "java.base/sun.nio.ch",
            "java.base/java.io",
            "java.base/java.lang.reflect",
            "jdk.compiler/com.sun.tools.javac",
            "java.base/java.lang",
            "java.base/java.util",
            "java.base/java.nio",
            "java.base/java.nio.charset",
        )
    ),
]


def render(template: str, target: Path, **values: object) -> Path:
    text = Template((TEMPLATES / template).read_text()).substitute(
        {k: str(v) for k, v in values.items()}
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


@dataclass
class Service:
    """One JVM server of the stack; its files live under ``<state_dir>/<name>/``."""

    name: str
    cfg: Settings
    heap: str
    address: str
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder = self.cfg.state_dir / self.name

    @property
    def pid_file(self) -> Path:
        return self.folder / "pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "logs" / f"{self.name}.log"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def marker(self) -> str:
        # Put on the command line so a pid file is only trusted while it still names our JVM
        # (pids are reused after a crash or reboot).
        return f"-Dadstats.stack={self.cfg.state_dir / self.name}"

    def prepare(self) -> None:
        """Write config files and do one-time initialisation; runs before every start."""

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError


class Kafka(Service):
    def __init__(self, cfg: Settings) -> None:
        heap = os.environ.get("ADSTATS_KAFKA_HEAP", "768m")
        super().__init__("kafka", cfg, heap, f"127.0.0.1:{cfg.kafka_port}")

    @property
    def properties(self) -> Path:
        return self.folder / "conf" / "server.properties"

    def _jvm(self) -> list[str]:
        log_config = render("kafka-log4j2.yaml", self.folder / "conf" / "log4j2.yaml")
        return [
            java(), f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC", self.marker,
            f"-Dlog4j2.configurationFile={log_config}",
            "-cp", jars.classpath(self.cfg, "kafka"),
        ]

    def prepare(self) -> None:
        import subprocess

        render(
            "kafka-server.properties", self.properties,
            port=self.cfg.kafka_port, controller_port=self.cfg.kafka_controller_port,
            data_dir=self.data_dir,
        )
        if (self.data_dir / "meta.properties").exists():
            return
        # May start with "-": always pass it as --cluster-id=VALUE, never as a separate word.
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        fmt = [*self._jvm(), "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
               "-c", str(self.properties), "--ignore-formatted"]
        proc = subprocess.run(fmt, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"formatting Kafka storage failed:\n{proc.stdout}{proc.stderr}")

    def command(self) -> list[str]:
        return [*self._jvm(), "kafka.Kafka", str(self.properties)]

    def is_ready(self) -> bool:
        from kafka import KafkaAdminClient

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.address, request_timeout_ms=3000,
                client_id="adstats-probe",
            )
        except Exception:
            return False
        try:
            admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            admin.close()


class Cassandra(Service):
    def __init__(self, cfg: Settings) -> None:
        heap = os.environ.get("ADSTATS_CASSANDRA_HEAP", "1g")
        super().__init__("cassandra", cfg, heap, f"127.0.0.1:{cfg.cassandra_port}")

    def prepare(self) -> None:
        render(
            "cassandra.yaml", self.folder / "conf" / "cassandra.yaml",
            storage_port=self.cfg.cassandra_storage_port,
            native_port=self.cfg.cassandra_port, data_dir=self.data_dir,
        )
        render("cassandra-logback.xml", self.folder / "conf" / "logback.xml")

    def command(self) -> list[str]:
        conf = self.folder / "conf"
        return [
            java(), f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC", self.marker,
            "-Xss256k", "-XX:+HeapDumpOnOutOfMemoryError", "-XX:HeapDumpPath=/dev/null",
            *CASSANDRA_JVM17_FLAGS,
            f"-Dcassandra.config={(conf / 'cassandra.yaml').as_uri()}",
            f"-Dlogback.configurationFile={conf / 'logback.xml'}",
            f"-Dcassandra.storagedir={self.data_dir}",
            f"-Dcassandra.logdir={self.log_file.parent}",
            "-Dcassandra-foreground=yes",
            "-Djava.net.preferIPv4Stack=true",
            # A single seed node: nothing to gossip with, no superuser-creation delay.
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.superuser_setup_delay_ms=0",
            "-cp", jars.classpath(self.cfg, "cassandra"),
            "org.apache.cassandra.service.CassandraDaemon",
        ]

    def is_ready(self) -> bool:
        from serving_layer.cassandra_session import admin_session

        try:
            with admin_session(self.cfg, connect_timeout=3) as session:
                session.execute("SELECT release_version FROM system.local")
            return True
        except Exception:
            return False


def all_services(cfg: Settings) -> list[Service]:
    return [Kafka(cfg), Cassandra(cfg)]
