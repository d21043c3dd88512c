"""``adstats airflow``: a local Airflow for the adstats DAGs, on SQLite, on loopback only.

    adstats airflow                 # api-server, scheduler, dag-processor, triggerer
    adstats airflow --port 8081
    adstats airflow --standalone    # `airflow standalone` itself (see the note below)

AIRFLOW_HOME is ``$ADSTATS_AIRFLOW_HOME`` or ``$ADSTATS_HOME/airflow``; the DAG folder is the
repository's ``dags/``; example DAGs are off; the API/UI listens on 127.0.0.1:8080 and the
task runners reach the execution API there (``AIRFLOW__CORE__EXECUTION_API_SERVER_URL``).
The admin password is the one Airflow's simple auth manager generates into
``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated``; it is printed once the API
answers. Each component logs to ``$AIRFLOW_HOME/logs/<component>.out``. Ctrl-C (or TERM)
stops the components by their pids.

By default the same four components ``airflow standalone`` runs are started one by one, because
standalone's scheduler and triggerer also start Airflow's worker log server, which binds all
interfaces (host "" in ``airflow/utils/serve_logs/core.py``) on 8793/8794; here they run with
``--skip-serve-logs`` (the API server reads task logs from the local log folder) and nothing
listens beyond 127.0.0.1. ``--standalone`` runs ``airflow standalone`` as is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from adstats.config import Settings, settings

REPO = Path(__file__).resolve().parents[1]
DAGS_FOLDER = REPO / "dags"
HOST = "127.0.0.1"
SIMPLE_AUTH = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
PASSWORD_FILE = "simple_auth_manager_passwords.json.generated"
_STOP_SECONDS = 30


def airflow_home(cfg: Settings | None = None) -> Path:
    raw = os.environ.get("ADSTATS_AIRFLOW_HOME", "").strip()
    return Path(raw).expanduser().absolute() if raw else (cfg or settings()).home / "airflow"


def airflow_env(
    home: Path, port: int = 8080, base: dict[str, str] | None = None
) -> dict[str, str]:
    """The environment of every Airflow process: SQLite in ``home``, the repo's DAGs, loopback
    API, LocalExecutor, simple auth with one admin, the venv's ``bin`` first on PATH."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{HOST}:{port}/execution/",
        "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
    })
    return env


def components(port: int = 8080) -> dict[str, list[str]]:
    """The processes of a local Airflow (what ``airflow standalone`` runs), loopback only."""
    return {
        "api-server": ["api-server", "--host", HOST, "--port", str(port)],
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
        "triggerer": ["triggerer", "--skip-serve-logs"],
    }


def admin_login(home: Path) -> tuple[str, str] | None:
    """(user, password) from the simple auth manager's generated password file, if written."""
    try:
        users = json.loads((home / PASSWORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(users, dict) or not users:
        return None
    user = "admin" if "admin" in users else next(iter(users))
    return user, str(users[user])


def _api_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/api/v2/monitor/health",
                                    timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _stop(procs: dict[str, subprocess.Popen]) -> None:
    """TERM each component by its pid, KILL what is left after a grace period."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_SECONDS
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"airflow {name} (pid {proc.pid}) did not stop; killing it", file=sys.stderr)
            proc.kill()
            proc.wait()


def run(port: int = 8080, standalone: bool = False, timeout: float = 180) -> int:
    """Start Airflow in the foreground; returns when it is stopped (Ctrl-C / TERM)."""
    cfg = settings()
    home = airflow_home(cfg)
    if not DAGS_FOLDER.is_dir():
        raise FileNotFoundError(f"no dags/ folder at {DAGS_FOLDER} (an editable install of the "
                                "repository is needed)")
    home.mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    env = airflow_env(home, port)
    print(f"AIRFLOW_HOME={home}\nDAGs: {DAGS_FOLDER}", flush=True)
    subprocess.run(["airflow", "db", "migrate"], env=env, check=True,
                   stdout=subprocess.DEVNULL)

    commands = {"standalone": ["standalone"]} if standalone else components(port)
    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def _terminate(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        for name, args in commands.items():
            out = (home / "logs" / f"{name}.out").open("ab")
            procs[name] = subprocess.Popen(["airflow", *args], env=env, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            out.close()
            print(f"started airflow {name} (pid {procs[name].pid}), log "
                  f"{home / 'logs' / f'{name}.out'}", flush=True)
        began, announced = time.monotonic(), False
        while not stopping:
            dead = {n: p.returncode for n, p in procs.items() if p.poll() is not None}
            if dead:
                print(f"airflow component(s) exited: {dead}; stopping the others "
                      f"(see {home / 'logs'})", file=sys.stderr)
                return 1
            if not announced and _api_up(port):
                login = admin_login(home)
                print(f"\nAirflow UI/API: http://{HOST}:{port}", flush=True)
                if login:
                    print(f"login: {login[0]} / {login[1]}   (from {home / PASSWORD_FILE})")
                else:
                    print(f"login: see {home / PASSWORD_FILE}")
                print("Ctrl-C stops it.", flush=True)
                announced = True
            if not announced and time.monotonic() - began > timeout:
                print(f"the API did not answer on {HOST}:{port} within {timeout:.0f} s "
                      f"(see {home / 'logs'})", file=sys.stderr)
                return 1
            time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("stopping Airflow ...", file=sys.stderr, flush=True)
        _stop(procs)


def _cmd_airflow(args: argparse.Namespace) -> int:
    return run(port=args.port, standalone=args.standalone, timeout=args.timeout)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``adstats airflow`` to the CLI (called from adstats/cli.py)."""
    parser = subparsers.add_parser(
        "airflow", help="run a local Airflow (SQLite, 127.0.0.1) with the adstats DAGs",
        description="Runs Airflow's api-server, scheduler, dag-processor and triggerer with "
        "AIRFLOW_HOME=$ADSTATS_AIRFLOW_HOME (default $ADSTATS_HOME/airflow) and the repo's "
        "dags/; prints the URL and the admin login. Ctrl-C stops it.",
    )
    parser.add_argument("--port", type=int, default=8080, help="API/UI port (127.0.0.1)")
    parser.add_argument("--standalone", action="store_true",
                        help="run `airflow standalone` instead (its log servers bind all "
                        "interfaces)")
    parser.add_argument("--timeout", type=float, default=180,
                        help="seconds to wait for the API to answer")
    parser.set_defaults(func=_cmd_airflow)


def main(argv: list[str] | None = None) -> int:
    """``python -m adstats.airflow_runner [--port N] [--standalone]``."""
    parser = argparse.ArgumentParser(prog="adstats")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["airflow", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
