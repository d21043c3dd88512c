"""``adstats stack up | down | status | logs``: start, stop and inspect the local stack.

Services run as background JVM processes in their own session; their pid files, logs and data
live under the state folder. Processes are only ever stopped by the pid we recorded, after
checking that the pid still belongs to our JVM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from adstats.config import Settings
from adstats.stack.services import Service, all_services


class StackError(RuntimeError):
    """A service failed to start or stop; the message says which and where its log is."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def running_pid(service: Service) -> int | None:
    """The pid of the service's JVM if it is alive and really ours, else None."""
    try:
        pid = int(service.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if service.marker.encode() not in cmdline:
        return None  # the pid was reused by an unrelated process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except (OSError, IndexError):
        return None
    return None if state == "Z" else pid


def tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open(errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return "(no log yet)\n"


def start(service: Service, timeout: float) -> float:
    """Start one service and wait until it answers; return seconds taken (0 if already up)."""
    pid = running_pid(service)
    if pid is not None:
        if service.is_ready():
            _say(f"{service.name}: already running (pid {pid}) on {service.address}")
            return 0.0
        _say(f"{service.name}: running (pid {pid}) but not answering yet; waiting")
        began = time.monotonic()
        _wait_ready(service, None, timeout, began)
        return time.monotonic() - began
    began = time.monotonic()
    _say(f"{service.name}: starting on {service.address} (heap {service.heap}) ...")
    service.folder.mkdir(parents=True, exist_ok=True)
    service.prepare()
    service.log_file.parent.mkdir(parents=True, exist_ok=True)
    with service.log_file.open("ab") as log:
        proc = subprocess.Popen(
            service.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=service.folder, start_new_session=True,
        )
    service.pid_file.write_text(f"{proc.pid}\n")
    _wait_ready(service, proc, timeout, began)
    took = time.monotonic() - began
    _say(f"{service.name}: up (pid {proc.pid}) in {took:.1f} s")
    return took


def _wait_ready(
    service: Service, proc: subprocess.Popen | None, timeout: float, began: float
) -> None:
    next_note = began + 10
    while True:
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{service.name} exited with code {proc.returncode} during start-up.\n"
                f"log: {service.log_file}\n{tail(service.log_file)}"
            )
        if service.is_ready():
            return
        now = time.monotonic()
        if now - began > timeout:
            raise StackError(
                f"{service.name} did not answer on {service.address} within {timeout:.0f} s.\n"
                f"log: {service.log_file}\n{tail(service.log_file)}"
            )
        if now >= next_note:
            _say(f"{service.name}: still starting ({now - began:.0f} s) ...")
            next_note = now + 10
        time.sleep(1)


def stop(service: Service, grace: float = 60) -> bool:
    """TERM the service's JVM, KILL it after ``grace`` seconds. Returns whether it was up."""
    pid = running_pid(service)
    if pid is None:
        service.pid_file.unlink(missing_ok=True)
        return False
    _say(f"{service.name}: stopping pid {pid} ...")
    _signal(pid, signal.SIGTERM)
    deadline, killed = time.monotonic() + grace, False
    while running_pid(service) is not None:
        if time.monotonic() > deadline:
            if killed:
                raise RuntimeError(f"{service.name}: pid {pid} survived SIGKILL for 30 s")
            _say(f"{service.name}: no exit after {grace:.0f} s, sending KILL")
            _signal(pid, signal.SIGKILL)
            deadline, killed = time.monotonic() + 30, True
        time.sleep(0.2)
    _reap(pid)
    service.pid_file.unlink(missing_ok=True)
    _say(f"{service.name}: stopped")
    return True


def _signal(pid: int, sig: int) -> None:
    """Signal our recorded pid; it may have exited since we looked, which is fine."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int, timeout: float = 10) -> None:
    """Wait until the exiting JVM is gone. A zombie already has an empty cmdline (so
    ``running_pid`` says None) but still holds its pid: when this process started the JVM it
    is our child and we must collect it; otherwise its parent (init) does."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)


def up(cfg: Settings, timeout: float = 180) -> dict[str, float]:
    """Start every service (idempotent), create topics; return seconds per service."""
    from adstats.stack.topics import ensure_topics

    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    timings = {s.name: start(s, timeout) for s in all_services(cfg)}
    ensure_topics(cfg)
    return timings


def down(cfg: Settings) -> None:
    stopped, errors = [], []
    for service in reversed(all_services(cfg)):  # one failure must not leave the others up
        try:
            stopped.append(stop(service))
        except (OSError, RuntimeError) as exc:
            errors.append(f"{service.name}: {exc}")
    if errors:
        raise RuntimeError("stack down: " + "; ".join(errors))
    if not any(stopped):
        _say("stack: nothing was running")


def status(cfg: Settings) -> list[dict[str, str]]:
    rows = []
    for service in all_services(cfg):
        pid = running_pid(service)
        state = "down"
        if pid is not None:
            state = "up" if service.is_ready() else "starting"
        rows.append({
            "service": service.name, "pid": str(pid or "-"),
            "address": service.address, "state": state, "log": str(service.log_file),
        })
    return rows


def logs(cfg: Settings, name: str, lines: int, follow: bool) -> None:
    services = {s.name: s for s in all_services(cfg)}
    if name not in services:
        raise StackError(f"unknown service {name!r}; expected one of {sorted(services)}")
    log_file = services[name].log_file
    if not log_file.exists():
        raise StackError(f"{name} has no log yet at {log_file}")
    sys.stdout.write(tail(log_file, lines))
    if follow:
        with log_file.open(errors="replace") as fh:
            fh.seek(0, os.SEEK_END)
            try:
                while True:
                    line = fh.readline()
                    if line:
                        sys.stdout.write(line)
                        sys.stdout.flush()
                    else:
                        time.sleep(0.5)
            except KeyboardInterrupt:
                pass
