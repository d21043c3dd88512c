"""Resolve a component's jars with Maven, once, into the cache folder.

Each component has its own pom (``poms/<component>/pom.xml``) because Kafka and Cassandra
disagree on netty, jackson, guava and logging and must not share a classpath. The cache folder
name carries a hash of the pom, so editing a pom resolves again and never mixes versions.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

from adstats.config import Settings

POM_ROOT = Path(__file__).parent / "poms"
COMPONENTS = ("kafka", "cassandra", "spark-kafka")
_COMPLETE = ".complete"


class JarResolutionError(RuntimeError):
    """Maven could not resolve a component's jars."""


def pom_path(component: str) -> Path:
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS}")
    return POM_ROOT / component / "pom.xml"


def jar_folder(cfg: Settings, component: str) -> Path:
    digest = hashlib.sha256(pom_path(component).read_bytes()).hexdigest()[:12]
    return cfg.jar_dir / f"{component}-{digest}"


def resolve(cfg: Settings, component: str, quiet: bool = False) -> Path:
    """Return the folder holding ``component``'s runtime jars, running Maven if needed."""
    target = jar_folder(cfg, component)
    if (target / _COMPLETE).exists():
        return target
    if shutil.which("mvn") is None:
        raise JarResolutionError("Maven (mvn) is not on PATH; it is needed to resolve the jars")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two processes resolving at once (a test session and the demo) would share the staging
    # folder: the second waits for the first, then finds the jars in place.
    with target.with_name(target.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE).exists():
            return target
        return _resolve_locked(component, target, quiet)


def _resolve_locked(component: str, target: Path, quiet: bool) -> Path:
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if not quiet:
        print(f"resolving {component} jars with Maven into {target} ...", file=sys.stderr)
    started = time.monotonic()
    cmd = [
        "mvn", "-B", "-q", "-f", str(pom_path(component)),
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise JarResolutionError(f"mvn failed for {component} (exit {proc.returncode}):\n{tail}")
    (staging / _COMPLETE).write_text(f"{time.time()}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    if not quiet:
        n = len(list(target.glob("*.jar")))
        print(f"  {n} jars in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return target


def classpath(cfg: Settings, component: str) -> str:
    """A java ``-cp`` value with every jar of the component."""
    return str(resolve(cfg, component) / "*")


def jar_list(cfg: Settings, component: str) -> list[Path]:
    return sorted(resolve(cfg, component).glob("*.jar"))
