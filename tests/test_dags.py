"""The Airflow DAGs: integrity (they parse, fast, with the promised schedule, retries and task
order) and end to end on the real stack with ``dag.test()`` (landing file -> ingest -> gates ->
exact batch rows -> batch_periods -> reconciliation; the daily DAG -> day row, speed rows
expired; a failed gate leaves the hour NOT exact)."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adstats.config import settings
from batch_layer import orchestration as orch
from tests.airflow_env import DAGS  # sets AIRFLOW_HOME etc.; airflow is imported after it

HOURLY, DAILY = "ad_stats_hourly", "ad_stats_daily"
PARSE_BOUND_SECONDS = 5.0  # loose on purpose: measured ~0.005-0.03 s per file


@pytest.fixture(scope="module")
def bag():
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="session")
def airflow_db():
    """The SQLite metadata DB in the test AIRFLOW_HOME (what `airflow db migrate` makes)."""
    from airflow.utils import db

    db.initdb()


def _upstream(dag) -> dict[str, list[str]]:
    return {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}


# ---------------------------------------------------------------------------------- integrity
def test_dag_folder_imports_cleanly(bag):
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == {HOURLY, DAILY}


def test_each_dag_file_parses_fast(bag):
    stats = {Path(s.file).name: s.duration.total_seconds() for s in bag.dagbag_stats}
    print("\nDAG parse times:", {k: f"{v * 1000:.1f} ms" for k, v in stats.items()})
    assert set(stats) == {"ad_stats_hourly.py", "ad_stats_daily.py"}
    assert all(v < PARSE_BOUND_SECONDS for v in stats.values()), stats


def test_dag_files_import_nothing_heavy():
    import subprocess
    import sys

    code = ("import sys, runpy\n"
            f"for f in ('{DAGS}/ad_stats_hourly.py', '{DAGS}/ad_stats_daily.py'):\n"
            "    runpy.run_path(f)\n"
            "heavy = [m for m in ('pyspark', 'cassandra', 'datasketches', 'pyarrow')"
            " if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    heavy = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert heavy == ["HEAVY="], out.stdout[-2000:]


def test_hourly_schedule_retries_and_task_order(bag):
    dag = bag.dags[HOURLY]
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression == "0 * * * *" and str(dag.timetable.timezone) == "UTC"
    assert dag.catchup is True and dag.max_active_runs == 4
    assert dag.start_date == orch.dag_start()
    assert {"allow_empty", "wait_for_input"} <= set(dag.params)
    assert _upstream(dag) == {
        "wait_for_hour": [],
        "ingest_hour": ["wait_for_hour"],
        "check_hour": ["ingest_hour"],
        "recompute_hour": ["check_hour", "ingest_hour"],
        "reconcile_hour": ["recompute_hour"],
    }
    sensor = dag.get_task("wait_for_hour")
    assert sensor.mode == "reschedule" and sensor.timeout > 0 and sensor.retries == 0
    for task_id in ("ingest_hour", "check_hour", "recompute_hour", "reconcile_hour"):
        task = dag.get_task(task_id)
        assert task.retries >= 1 and task.retry_exponential_backoff >= 2, task_id
        assert task.max_retry_delay is not None and task.on_failure_callback, task_id


def test_daily_schedule_and_task_order(bag):
    dag = bag.dags[DAILY]
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression == "0 0 * * *"
    assert dag.catchup is True and 1 <= dag.max_active_runs <= 4
    assert _upstream(dag) == {
        "wait_for_hours": [],
        "recompute_day": ["wait_for_hours"],
        "reconcile_day": ["recompute_day"],
        "expire_speed_rows": ["reconcile_day"],
    }
    assert dag.get_task("wait_for_hours").mode == "reschedule"
    assert dag.get_task("recompute_day").retry_exponential_backoff >= 2


# ------------------------------------------------------------------------ end to end (stack)
HOUR = datetime(2026, 3, 17, 5, tzinfo=UTC)      # generated, landed, run by the hourly DAG
BAD_HOUR = datetime(2026, 3, 17, 9, tzinfo=UTC)  # 20 % malformed rows: fails its gate
NO_INPUT_HOUR = datetime(2026, 3, 17, 11, tzinfo=UTC)  # never lands: the sensor times out
DAY = datetime(2026, 3, 18, tzinfo=UTC)          # 24 hours batched, then the daily DAG


@pytest.fixture
def data_env(stack, tmp_path, monkeypatch):
    """Task code calls settings(): point it at a fresh data dir, landing side only."""
    monkeypatch.setenv("ADSTATS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(orch.READY_ENV, "files")
    for name in (orch.LANDING_ENV, orch.ALLOW_EMPTY_ENV, orch.MAX_QUARANTINE_ENV,
                 orch.RECONCILE_MAX_ENV):
        monkeypatch.delenv(name, raising=False)
    return settings()


def _rows(cfg, table: str, granularity: str, bucket: str, start: datetime) -> dict:
    from serving_layer.cassandra_session import writer_session

    out = {}
    with writer_session(cfg) as session:
        for dim in ("placement", "page", "banner"):
            for r in session.execute(
                    f"SELECT * FROM {table} WHERE dimension=%s AND granularity=%s AND bucket=%s"
                    " AND period_start=%s", (dim, granularity, bucket, start)):
                out[(dim, r.dim_id)] = (r.views, r.clicks, r.distinct_users)
    return out


def _speed_rows_from(expected: dict, granularity_start: datetime, missing_views: int) -> list:
    """Placement rows as the speed layer would write them, each short of a few views."""
    epoch = int(granularity_start.timestamp())
    return [
        {"dimension": dim, "granularity": "hour", "period_start": granularity_start,
         "dim_id": dim_id, "views": v - missing_views, "clicks": c, "distinct_users": u,
         "users_sketch": None}
        for (dim, dim_id, g, ts), (v, c, u) in expected.items()
        if dim == "placement" and g == "hour" and ts == epoch
    ]


def test_hourly_dag_end_to_end(data_env, spark, bag, airflow_db):
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import read_period, read_reconciliation, write_speed_rows
    from tests.oracle import oracle_stats
    from utils.generate_sample_data import generate

    cfg = data_env
    files = generate(out_dir=cfg.landing_dir, n_events=2000, n_banners=4, n_pages=5,
                     n_batches=1, n_users=300, start=HOUR, seed=5, event_id=True, quiet=True)
    assert orch.hour_is_complete(HOUR, cfg)
    expected = oracle_stats(files)
    speed = _speed_rows_from(expected, HOUR, missing_views=1)
    with writer_session(cfg) as session:
        write_speed_rows(session, speed)

    began = time.monotonic()
    run = bag.dags[HOURLY].test(logical_date=HOUR + timedelta(hours=1))
    print(f"\nhourly dag.test: {time.monotonic() - began:.1f} s")
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert run.data_interval_start == HOUR

    got = _rows(cfg, "batch_stats", "hour", "2026-03-17", HOUR)
    want = {(d, i): v for (d, i, g, ts), v in expected.items()
            if g == "hour" and ts == int(HOUR.timestamp())}
    assert got == want and got
    with writer_session(cfg) as session:
        period = read_period(session, "hour", HOUR)
        rec = read_reconciliation(session, "hour", HOUR)
    assert period is not None and period.input_events == 2000
    assert rec is not None and rec["run_id"] == run.run_id
    assert rec["batch_events"] == 2000 and rec["batch_run_id"] == period.run_id
    assert rec["speed_rows"] == len(speed) and rec["views_diff"] == -len(speed)
    assert rec["clicks_diff"] == 0 and rec["users_rel_error"] == 0.0

    # What users see: the serving layer answers the hour from the batch layer, exact.
    from serving_layer.merge import stats

    served = stats("placement", None, "hour", HOUR, HOUR + timedelta(hours=1), cfg=cfg)
    assert served and all(r.source == "batch" and r.exact for r in served)
    assert {r.id: (r.views, r.clicks, r.distinct_users) for r in served} == {
        i: v for (d, i), v in want.items() if d == "placement"}


def test_hour_whose_input_never_arrives_times_out_with_a_clear_message(
        data_env, airflow_db, monkeypatch, caplog):
    from airflow.models import DagBag

    # Sensor intervals are read when the DAG file is parsed: parse it again with small ones.
    monkeypatch.setenv("ADSTATS_HOUR_POKE_MINUTES", "0.01")        # 0.6 s
    monkeypatch.setenv("ADSTATS_HOUR_WAIT_TIMEOUT_MINUTES", "0.05")  # 3 s
    dag = DagBag(dag_folder=str(DAGS / "ad_stats_hourly.py")).dags[HOURLY]
    assert dag.get_task("wait_for_hour").timeout == 3

    began = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="adstats.orchestration"):
        run = dag.test(logical_date=NO_INPUT_HOUR + timedelta(hours=1))
    print(f"\nsensor timed out after {time.monotonic() - began:.1f} s")
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states["wait_for_hour"] == "failed", states
    assert states["ingest_hour"] == "upstream_failed", states
    failures = [r.getMessage() for r in caplog.records if "wait_for_hour failed" in
                r.getMessage()]
    assert failures, [r.getMessage() for r in caplog.records]
    message = failures[-1]
    print(message)
    assert "AirflowSensorTimeout" in message and "2026-03-17T11" in message
    assert "its input never arrived" in message
    assert "no 2026-03-17_11-00-00_*.csv in" in message


def test_failed_gate_leaves_the_hour_not_exact(data_env, spark, bag, airflow_db):
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import read_period
    from utils.generate_sample_data import generate

    generate(out_dir=data_env.landing_dir, n_events=500, n_batches=1, start=BAD_HOUR, seed=6,
             event_id=True, malformed_fraction=0.2, quiet=True)
    run = bag.dags[HOURLY].test(logical_date=BAD_HOUR + timedelta(hours=1))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "failed"
    assert states["ingest_hour"] == "success" and states["check_hour"] == "failed"
    assert states["recompute_hour"] == "upstream_failed", states
    with writer_session(data_env) as session:
        assert read_period(session, "hour", BAD_HOUR) is None
    assert _rows(data_env, "batch_stats", "hour", "2026-03-17", BAD_HOUR) == {}


def test_daily_dag_end_to_end(data_env, spark, bag, airflow_db):
    from batch_layer.ingest import ingest
    from batch_layer.jobs import plan_range, run_batch
    from serving_layer.cassandra_session import writer_session
    from serving_layer.views import read_period, read_reconciliation, write_speed_rows
    from tests.oracle import oracle_stats
    from utils.generate_sample_data import generate

    cfg = data_env
    files = generate(out_dir=cfg.landing_dir, n_events=150, n_banners=3, n_pages=4,
                     n_batches=24, n_users=200, start=DAY, seed=7, event_id=True, quiet=True)
    expected = oracle_stats(files)
    with writer_session(cfg) as session:
        write_speed_rows(session, _speed_rows_from(expected, DAY + timedelta(hours=3), 0))
    # Hours not exact yet: the sensor would keep waiting, and nothing may be expired.
    assert not orch.day_is_ready(DAY, cfg)
    with pytest.raises(orch.HourNotReady, match="not expiring speed rows"):
        orch.expire_speed_rows(DAY, cfg)

    # What a backfill does (`adstats batch range`): all 24 hours exact.
    ingest([cfg.landing_dir], spark=spark, cfg=cfg, quiet=True)
    hours, _ = plan_range(DAY, DAY + timedelta(days=1))
    run_batch(hours, [], spark=spark, cfg=cfg, quiet=True)
    assert orch.day_is_ready(DAY, cfg)

    run = bag.dags[DAILY].test(logical_date=DAY + timedelta(days=1))
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    day_rows = _rows(cfg, "batch_stats", "day", "2026-03", DAY)
    assert day_rows == {(d, i): v for (d, i, g, ts), v in expected.items()
                        if g == "day" and ts == int(DAY.timestamp())}
    with writer_session(cfg) as session:
        assert read_period(session, "day", DAY).input_events == 150 * 24
        rec = read_reconciliation(session, "day", DAY)
        left = list(session.execute(
            "SELECT dim_id FROM speed_stats WHERE dimension='placement' AND granularity='hour'"
            " AND bucket='2026-03-18'"))
    assert rec["batch_events"] == 150 * 24 and rec["speed_rows"] > 0
    assert left == []  # superseded realtime rows are gone
