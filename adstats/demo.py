"""``adstats demo``: the whole lambda loop on the local stack, in one command.

    stack up -> a day of sample data (24 hourly files) -> hours 00-19 through the batch layer
    with the Airflow hourly DAG (dag.test) -> hours 20-23 replayed through Kafka into the
    running speed layer -> API up -> merged stats (batch / speed / mixed) -> the batch layer
    catches up on 20-23 and the day -> reconciliation (speed vs exact) -> how to stop

The demo keeps to itself: keyspace ``adstats_demo``, topics ``ad-events-demo``/``-dlq``, files
and stream state under ``$ADSTATS_HOME/demo``; each run starts from a clean slate.
``adstats demo down`` stops what it started (stream, API) and the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from adstats.config import Settings, settings

DEMO_DAY = datetime(2026, 1, 15, tzinfo=UTC)
STREAMED_HOURS = 4
DEMO_ENV = {
    "ADSTATS_KEYSPACE": "adstats_demo",
    "ADSTATS_TOPIC": "ad-events-demo",
    "ADSTATS_DLQ_TOPIC": "ad-events-demo-dlq",
    # The demo's hours are complete once their landing file is there (also the streamed ones:
    # the same events land as files too, and the batch layer reads both doors).
    "ADSTATS_HOUR_READY": "files",
}


def demo_home(cfg: Settings) -> Path:
    return Path(os.environ.get("ADSTATS_DEMO_DIR") or cfg.home / "demo")


def _step(n: int, text: str) -> None:
    print(f"\n==> [{n}/9] {text}", flush=True)


def _note(text: str) -> None:
    print(f"    {text}", flush=True)


def _pid_file(home: Path, name: str) -> Path:
    return home / f"{name}.pid"


def _start_child(home: Path, name: str, args: list[str]) -> subprocess.Popen:
    with (home / f"{name}.log").open("ab") as log:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, "-m", "adstats.cli", *args], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=os.environ.copy())
    _pid_file(home, name).write_text(f"{proc.pid}\n")
    return proc


def stop_children(home: Path) -> None:
    """Stop the demo's stream and API by their recorded pids (TERM, then KILL)."""
    for name in ("api", "stream"):
        pid_file = _pid_file(home, name)
        try:
            pid = int(pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if b"adstats.cli" not in cmdline:  # pid reused by something else
            pid_file.unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.2)
        if Path(f"/proc/{pid}").exists():
            os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        print(f"demo: stopped {name} (pid {pid})", file=sys.stderr)


def _reset(cfg: Settings, home: Path) -> None:
    """A clean slate: no files, no stream checkpoint, empty keyspace and topics."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from serving_layer.cassandra_session import admin_session
    from serving_layer.schema import init_db

    stop_children(home)
    for sub in ("data", "state", "airflow"):
        shutil.rmtree(home / sub, ignore_errors=True)
    with admin_session(cfg) as session:
        session.execute(f"DROP KEYSPACE IF EXISTS {cfg.keyspace}", timeout=120)
    init_db(cfg, quiet=True)
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka_bootstrap)
    try:
        existing = set(admin.list_topics()) & {cfg.topic, cfg.dlq_topic}
        if existing:
            admin.delete_topics(sorted(existing))
            _wait(lambda: not set(admin.list_topics()) & existing, 60, "topic deletion")
        _wait(lambda: _create_topics(admin, cfg, NewTopic), 60, "topic creation")
    finally:
        admin.close()


def _create_topics(admin, cfg: Settings, new_topic) -> bool:
    from kafka.errors import TopicAlreadyExistsError

    try:
        admin.create_topics([new_topic(cfg.topic, 4, 1), new_topic(cfg.dlq_topic, 1, 1)])
        return True
    except TopicAlreadyExistsError:  # deletion still settling
        return False


def _wait(condition, timeout: float, what: str, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class _Progress:
    """A line every ~10 s while waiting, so a slow step never looks like a hang."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what = total, what
        self.began = self.last = time.monotonic()

    def show(self, done: int) -> int:
        now = time.monotonic()
        if now - self.last >= 10 and done < self.total:
            self.last = now
            _note(f"{done:,} / {self.total:,} {self.what} ({now - self.began:.0f} s)")
        return done


def _airflow_dags(home: Path):
    """The repo's DAGs in a demo AIRFLOW_HOME (SQLite), ready for dag.test()."""
    airflow_home = home / "airflow"
    airflow_home.mkdir(parents=True, exist_ok=True)
    dags = Path(__file__).resolve().parents[1] / "dags"
    os.environ.update({
        "AIRFLOW_HOME": str(airflow_home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    })
    from airflow.models import DagBag
    from airflow.utils import db

    db.initdb()
    bag = DagBag(dag_folder=str(dags))
    if bag.import_errors:
        raise RuntimeError(f"demo: DAG import errors: {bag.import_errors}")
    return bag.dags["ad_stats_hourly"], bag.dags["ad_stats_daily"]


def _run_dag(dag, logical_date: datetime, label: str) -> None:
    import logging

    logging.getLogger("airflow").setLevel(logging.WARNING)
    began = time.monotonic()
    run = dag.test(logical_date=logical_date)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    if run.state != "success":
        raise RuntimeError(f"demo: {dag.dag_id} for {label} failed: {states}")
    _note(f"{dag.dag_id} {label}: success ({time.monotonic() - began:.1f} s)")


def _placement_total(cfg: Settings, hours: list[datetime]) -> int:
    from serving_layer.cassandra_session import writer_session

    with writer_session(cfg) as session:
        rows = session.execute(
            "SELECT period_start, views, clicks FROM speed_stats WHERE dimension='placement'"
            " AND granularity='hour' AND bucket=%s", (f"{hours[0]:%Y-%m-%d}",))
        wanted = {h.replace(tzinfo=None) for h in hours}
        return sum(r.views + r.clicks for r in rows if r.period_start in wanted)


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _print_rows(title: str, rows: list[dict], period: bool) -> None:
    print(f"\n    {title}")
    head = f"    {'period' if period else 'id':<17} {'views':>9} {'clicks':>8} {'ctr':>7} " \
           f"{'distinct users [low-high]':>27}  source  exact"
    print(head)
    for r in sorted(rows, key=lambda r: (r["period_start"], len(r["id"]), r["id"])):
        key = r["period_start"][11:16] if period else r["id"]
        users = f"{r['distinct_users']:,} [{r['distinct_users_low']:,}-" \
                f"{r['distinct_users_high']:,}]"
        ctr = f"{r['ctr']:.4f}" if r["ctr"] is not None else "-"
        print(f"    {key:<17} {r['views']:>9,} {r['clicks']:>8,} {ctr:>7} {users:>27}  "
              f"{r['source']:<6}  {str(r['exact']).lower()}")


def _show(api: str, when: str) -> dict:
    """Print the day per placement and per page and the last hours; return the day rows."""
    day, nxt = f"{DEMO_DAY:%Y-%m-%d}", f"{DEMO_DAY + timedelta(days=1):%Y-%m-%d}"
    out = {}
    for dim in ("placement", "page"):
        body = _get(f"{api}/v1/stats/{dim}?granularity=day&from={day}&to={nxt}")
        out[dim] = body["rows"]
        _print_rows(f"{when}: the day per {dim}", body["rows"], period=False)
    last = f"{DEMO_DAY + timedelta(hours=24 - STREAMED_HOURS - 2):%Y-%m-%dT%H}"
    for dim, dim_id in (("placement", "placement0"), ("page", "page0")):
        body = _get(f"{api}/v1/stats/{dim}?id={dim_id}&granularity=hour&from={last}&to={nxt}")
        _print_rows(f"{when}: the last hours of {dim_id}", body["rows"], period=True)
    return out


def _print_summary(tag: str, rows: dict) -> None:
    # One machine-readable line per dimension, for the demo's own test.
    for dim, dim_rows in rows.items():
        total = {"views": sum(r["views"] for r in dim_rows),
                 "clicks": sum(r["clicks"] for r in dim_rows),
                 "sources": sorted({r["source"] for r in dim_rows}),
                 "by_id": {r["id"]: [r["views"], r["clicks"], r["distinct_users"],
                                     r["distinct_users_low"], r["distinct_users_high"]]
                           for r in dim_rows}}
        print(f"DEMO-TOTAL {tag} {dim} {json.dumps(total)}")


def run_demo(events_per_hour: int, port: int, print_totals: bool = False) -> int:
    began = time.monotonic()
    base = settings()
    home = demo_home(base)

    _step(1, "local stack: Kafka + Cassandra")
    from adstats.stack import manager
    from serving_layer.schema import init_db

    manager.up(base)
    init_db(base, quiet=True)
    os.environ.update(DEMO_ENV)
    os.environ["ADSTATS_DATA_DIR"] = str(home / "data")
    os.environ["ADSTATS_STATE_DIR"] = str(home / "state")
    cfg = settings()
    _reset(cfg, home)
    _note(f"keyspace {cfg.keyspace}, topic {cfg.topic}, files in {cfg.data_dir}")

    _step(2, f"a day of sample data: 24 hourly files x {events_per_hour:,} events")
    from utils.generate_sample_data import generate

    files = generate(out_dir=cfg.landing_dir, n_events=events_per_hour, n_banners=10,
                     n_pages=20, n_batches=24, n_users=max(1000, events_per_hour // 5),
                     start=DEMO_DAY, seed=2026, event_id=True, ctr=0.1, skew=0.8, quiet=True)
    _note(f"{len(files)} files in {cfg.landing_dir}")
    batch_hours = [DEMO_DAY + timedelta(hours=h) for h in range(24 - STREAMED_HOURS)]
    streamed = [DEMO_DAY + timedelta(hours=h) for h in range(24 - STREAMED_HOURS, 24)]
    # Only the batch hours' files have "landed" so far; the rest arrive through Kafka.
    held_back = cfg.data_dir / "held_back"
    held_back.mkdir(parents=True, exist_ok=True)
    late_files = [f for f in files if any(f.name.startswith(f"{h:%Y-%m-%d_%H}") for h in streamed)]
    for f in late_files:
        f.rename(held_back / f.name)

    _step(3, f"batch layer: hours 00-{len(batch_hours) - 1:02d} through the Airflow hourly DAG")
    hourly, daily = _airflow_dags(home)
    for hour in batch_hours:
        _run_dag(hourly, hour + timedelta(hours=1), f"{hour:%H}:00")

    _step(4, f"speed layer: `adstats stream`, then hours {streamed[0]:%H}-{streamed[-1]:%H} "
             "replayed through Kafka")
    stream = _start_child(home, "stream", ["stream", "--trigger", "1 second"])
    from utils.produce_events import produce

    report = produce([held_back / f.name for f in late_files], topic=cfg.topic,
                     bootstrap=cfg.kafka_bootstrap, progress=False)
    _note(f"{report.sent:,} events sent to {cfg.topic} ({report.events_per_s:,.0f} events/s)")
    progress = _Progress(report.sent, "counted by the speed layer")

    def counted() -> bool:
        if stream.poll() is not None:
            return True
        return progress.show(_placement_total(cfg, streamed)) == report.sent

    _wait(counted, 600, "the speed layer to count the replayed events", every=2)
    if stream.poll() is not None:
        raise RuntimeError(f"demo: the stream exited; see {home / 'stream.log'}")
    _note(f"realtime views count all {report.sent:,} events")

    _step(5, f"serving layer: `adstats serve` on 127.0.0.1:{port}")
    api = f"http://127.0.0.1:{port}"
    _start_child(home, "api", ["serve", "--host", "127.0.0.1", "--port", str(port)])
    _wait(lambda: _healthy(api), 120, "the API")

    _step(6, "merged answers: exact where batch has run, fresh where it has not")
    before = _show(api, "before catch-up")
    if print_totals:
        _print_summary("before", before)

    _step(7, f"the streamed hours' files land; the batch layer catches up (hourly x "
             f"{len(streamed)} + daily DAG)")
    for f in late_files:
        (held_back / f.name).rename(cfg.landing_dir / f.name)
    for hour in streamed:
        _run_dag(hourly, hour + timedelta(hours=1), f"{hour:%H}:00")
    recon = _reconciliation(cfg, streamed)
    _run_dag(daily, DEMO_DAY + timedelta(days=1), f"{DEMO_DAY:%Y-%m-%d}")

    _step(8, "reconciliation: speed layer vs exact batch, per streamed hour (placements)")
    from adstats.stats import HLL_LG_K

    bound = 2 * 1.04 / (2 ** HLL_LG_K) ** 0.5  # 2 standard errors of an HLL estimate
    print(f"    {'hour':<6} {'events speed':>13} {'events exact':>13} {'diff':>6} "
          f"{'users est.':>11} {'users exact':>12} {'error':>7} {'bound (2 sd)':>13}")
    count_diffs, outside = 0, 0
    for r in recon:
        speed = (r["speed_views"] or 0) + (r["speed_clicks"] or 0)
        exact = r["batch_views"] + r["batch_clicks"]
        within = abs(r["users_rel_error"] or 0) <= bound
        count_diffs += speed != exact
        outside += not within
        print(f"    {r['period_start']:%H}:00  {speed:>13,} {exact:>13,} {speed - exact:>6,} "
              f"{r['users_estimate'] or 0:>11,} {r['users_exact']:>12,} "
              f"{(r['users_rel_error'] or 0) * 100:>6.2f}% {'+/-' + f'{bound:.2%}':>13}"
              + ("" if within else "  OUTSIDE"))
    # Said from the figures above, not assumed: a difference is the speed layer's error
    # (late or lost events), which the batch layer has now repaired.
    _note("counts: " + ("equal in every streamed hour" if not count_diffs else
                        f"differ in {count_diffs} hour(s) (late events; batch repaired them)")
          + "; distinct users: " + ("every estimate within its 2-sd HLL bound" if not outside
                                    else f"{outside} estimate(s) outside the 2-sd bound")
          + f" (rse {bound / 2:.2%} at lgK {HLL_LG_K})")
    if print_totals:
        summary = {"hours": len(recon), "count_diffs": count_diffs,
                   "users_outside_bound": outside}
        print(f"DEMO-RECONCILIATION {json.dumps(summary)}")
    after = _show(api, "after catch-up")
    if print_totals:
        _print_summary("after", after)

    _step(9, f"done in {time.monotonic() - began:.0f} s")
    _note(f"API:      {api}/v1/stats/placement?granularity=day&from={DEMO_DAY:%Y-%m-%d}"
          f"&to={DEMO_DAY + timedelta(days=1):%Y-%m-%d}")
    _note(f"OpenAPI:  {api}/docs")
    _note(f"CLI:      ADSTATS_KEYSPACE={cfg.keyspace} adstats query page --granularity day "
          f"--from {DEMO_DAY:%Y-%m-%d} --to {DEMO_DAY + timedelta(days=1):%Y-%m-%d}")
    _note(f"logs:     {home}/stream.log, {home}/api.log")
    _note("stop:     make demo-down   (stream, API and the stack)")
    return 0


def _healthy(api: str) -> bool:
    try:
        return bool(_get(f"{api}/v1/health"))
    except OSError:
        return False


def _reconciliation(cfg: Settings, hours: list[datetime]) -> list[dict]:
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import read_reconciliation

    with writer_session(cfg) as session:
        records = [read_reconciliation(session, "hour", h) for h in hours]
    missing = [h for h, r in zip(hours, records, strict=True) if r is None]
    if missing:
        raise RuntimeError(f"demo: no reconciliation record for {missing}")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adstats demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", nargs="?", choices=["run", "down"], default="run")
    parser.add_argument("--events-per-hour", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=8000, help="API port (8000)")
    parser.add_argument("--print-totals", action="store_true",
                        help="also print machine-readable DEMO-TOTAL lines (used by tests)")
    args = parser.parse_args(argv)
    if args.action == "down":
        from adstats.stack import manager

        stop_children(demo_home(settings()))
        manager.down(settings())
        return 0
    try:
        return run_demo(args.events_per_hour, args.port, args.print_totals)
    except KeyboardInterrupt:
        stop_children(demo_home(settings()))
        return 130
    except Exception as exc:  # noqa: BLE001 - stop what the demo started, then say what failed
        home = demo_home(settings())
        stop_children(home)
        print(f"\ndemo failed: {exc}\n(the stream and API it started are stopped; the stack "
              f"is still up: `make demo-down` stops it; logs in {home})", file=sys.stderr)
        if os.environ.get("ADSTATS_DEBUG"):
            raise
        return 1
