"""The pure parts of batch_layer/orchestration.py (what the Airflow tasks call) and the
``adstats airflow`` runner's environment: no servers, no Spark, no Airflow."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from adstats import airflow_runner
from adstats.config import settings
from batch_layer import orchestration as orch

H = datetime(2026, 3, 2, 5, tzinfo=UTC)
LATER = H + timedelta(days=1)  # "now" long after the hour


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    for name in (orch.LANDING_ENV, orch.READY_ENV, orch.ALLOW_EMPTY_ENV, orch.STREAM_GRACE_ENV,
                 orch.EMPTY_WAIT_ENV, orch.MAX_QUARANTINE_ENV, orch.RECONCILE_MAX_ENV):
        monkeypatch.delenv(name, raising=False)
    return dataclasses.replace(settings(), data_dir=tmp_path / "data",
                               state_dir=tmp_path / "state")


def _land(cfg, hour: datetime, text: str = "timestamp\n1\n") -> Path:
    cfg.landing_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.landing_dir / f"{hour:%Y-%m-%d_%H}-00-00_sample_data.csv"
    path.write_text(text)
    return path


def _stream(cfg, watermark: str | None) -> None:
    path = orch.stream_status_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"watermark": watermark}))


# ------------------------------------------------------------------------------ completeness
def test_hour_incomplete_without_landing_file_complete_with_it(cfg):
    assert not orch.hour_is_complete(H, cfg, now=LATER)
    _land(cfg, H + timedelta(hours=1))  # the next hour's file does not count
    assert not orch.hour_is_complete(H, cfg, now=LATER)
    _land(cfg, H)
    state = orch.hour_completeness(H, cfg, now=LATER)
    assert state.complete and state.files == ("2026-03-02_05-00-00_sample_data.csv",)
    assert not state.stream and "no stream status" in state.reason


def test_empty_landing_file_is_not_complete(cfg):
    _land(cfg, H, text="")
    assert not orch.hour_is_complete(H, cfg, now=LATER)


def test_landing_dir_from_environment(cfg, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    monkeypatch.setenv(orch.LANDING_ENV, str(other))
    assert orch.landing_dir(cfg) == other
    other.mkdir()
    (other / f"{H:%Y-%m-%d_%H}-00-00_sample_data.csv").write_text("x\n")
    assert orch.hour_is_complete(H, cfg, now=LATER)


def test_stream_watermark_must_pass_hour_end_plus_grace(cfg):
    end = H + timedelta(hours=1)
    _stream(cfg, (end + timedelta(minutes=5)).isoformat())
    assert not orch.hour_is_complete(H, cfg, now=LATER)  # grace is 10 minutes
    _stream(cfg, (end + timedelta(minutes=10)).isoformat().replace("+00:00", "Z"))
    state = orch.hour_completeness(H, cfg, now=LATER)
    assert state.complete and state.stream and state.watermark.startswith("2026-03-02T06:10")
    assert orch.hour_is_complete(H, cfg, now=LATER, grace=timedelta(0))


def test_with_a_stream_auto_mode_waits_for_its_watermark(cfg):
    _land(cfg, H)
    _stream(cfg, H.isoformat())  # the stream is behind: its archive may still get events
    assert not orch.hour_is_complete(H, cfg, now=LATER)
    assert orch.hour_is_complete(H, cfg, now=LATER, mode="files")
    assert not orch.hour_is_complete(H, cfg, now=LATER, mode="both")
    _stream(cfg, (H + timedelta(hours=2)).isoformat())
    assert orch.hour_is_complete(H, cfg, now=LATER, mode="both")


def test_unreadable_stream_status_is_no_watermark(cfg):
    path = orch.stream_status_path(cfg)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert orch.read_watermark(path) is None
    path.write_text('{"watermark": "yesterday"}')
    assert orch.read_watermark(path) is None
    assert orch.read_watermark(path.with_name("absent.json")) is None
    state = orch.hour_completeness(H, cfg, now=LATER)
    assert state.stream and not state.complete  # a stream exists but says nothing usable


def test_allow_empty_accepts_a_silent_hour_only_after_the_wait(cfg, monkeypatch):
    end = H + timedelta(hours=1)
    assert not orch.hour_is_complete(H, cfg, now=end + timedelta(minutes=30), allow_empty=True)
    state = orch.hour_completeness(H, cfg, now=end + timedelta(minutes=61), allow_empty=True)
    assert state.complete and state.reason.startswith("accepted as empty")
    monkeypatch.setenv(orch.ALLOW_EMPTY_ENV, "true")
    assert orch.hour_is_complete(H, cfg, now=LATER)


def test_bad_ready_mode_is_rejected(cfg):
    with pytest.raises(ValueError, match="ADSTATS_HOUR_READY"):
        orch.hour_completeness(H, cfg, mode="sometimes")


# ------------------------------------------------------------------------------------ gates
def test_gates_pass_and_fail_with_reasons():
    ok = orch.HourInput(hour="2026-03-02T05", files=["f"], rows=1000, quarantined=10,
                        master_rows=990)
    assert orch.gate_problems(ok, allow_empty=False, max_quarantine_share=0.05) == []
    dirty = dataclasses.replace(ok, quarantined=60)
    [problem] = orch.gate_problems(dirty, False, 0.05)
    assert "quarantined 60 of 1,000" in problem and "6.0% > 5.0%" in problem
    empty = orch.HourInput(hour="2026-03-02T05")
    assert "no input events" in orch.gate_problems(empty, False, 0.05)[0]
    assert orch.gate_problems(empty, True, 0.05) == []
    rejected = dataclasses.replace(ok, not_ingested=["bad.csv"])
    assert "bad.csv" in orch.gate_problems(rejected, False, 0.05)[0]


def test_check_hour_reads_manifest_and_master_footers(cfg):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_layer.ingest import file_digest, manifest_path

    landed = _land(cfg, H, "event_id,timestamp\na,1\n")
    with pytest.raises(orch.DataQualityError, match=r"hour 2026-03-02T05 failed its checks"):
        orch.check_hour(H, cfg)  # not ingested and nothing in the master dataset
    manifest = manifest_path(cfg)
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"file": landed.name, "sha256": file_digest(landed),
                                    "rows": 100, "quarantined": 4}) + "\n")
    folder = cfg.master_dir / "files" / "date=2026-03-02" / "hour=5"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"event_id": [str(i) for i in range(96)]}), folder / "p.parquet")
    result = orch.check_hour(H, cfg)
    assert result["master_rows"] == 96 and result["quarantine_share"] == pytest.approx(0.04)
    with pytest.raises(orch.DataQualityError, match="quarantined 4 of 100"):
        orch.check_hour(H, cfg, max_quarantine_share=0.01)
    landed.write_text("event_id,timestamp\nb,2\n")  # a changed file is not the ingested one
    with pytest.raises(orch.DataQualityError, match="not ingested"):
        orch.check_hour(H, cfg)


def test_stale_periods_only_recorded_other_hours():
    touched = ["2026-03-02T02", "2026-03-02T05", "2026-03-01T23", "2026-03-02T04"]
    recorded = {datetime(2026, 3, 2, 2, tzinfo=UTC), datetime(2026, 3, 1, 23, tzinfo=UTC)}
    hours, days = orch.stale_periods(H, touched, recorded, {date(2026, 3, 1)})
    assert hours == [datetime(2026, 3, 1, 23, tzinfo=UTC), datetime(2026, 3, 2, 2, tzinfo=UTC)]
    assert days == [date(2026, 3, 1)]
    assert orch.stale_periods(H, ["2026-03-02T05"], recorded, set()) == ([], [])


# --------------------------------------------------------------------------- reconciliation
def test_reconciliation_record_with_and_without_speed():
    batch = orch.Totals(views=1000, clicks=50, rows=5, users=400)
    speed = orch.Totals(views=990, clicks=50, rows=5, users=404)
    rec = orch.reconciliation_record("hour", H, batch, 1050, speed, "batch-1", "run-1")
    assert rec["bucket"] == "2026-03-02" and rec["batch_events"] == 1050
    assert (rec["views_diff"], rec["clicks_diff"]) == (-10, 0)
    assert rec["views_rel_diff"] == pytest.approx(-0.01) and rec["clicks_rel_diff"] == 0.0
    assert rec["users_rel_error"] == pytest.approx(0.01)
    none = orch.reconciliation_record("day", H.replace(hour=0), batch, 1050, None, "b", "r")
    assert none["bucket"] == "2026-03" and none["speed_views"] is None
    assert none["views_diff"] is None and none["speed_rows"] == 0
    zero = orch.reconciliation_record("hour", H, orch.Totals(users=0), 0,
                                      orch.Totals(views=3, rows=1, users=1), None, None)
    assert zero["views_rel_diff"] is None and zero["clicks_rel_diff"] == 0.0
    assert set(orch.jsonable(rec)) == set(rec)
    assert orch.jsonable(rec)["period_start"] == "2026-03-02T05:00:00+00:00"


# ----------------------------------------------------------------------------- small pieces
def test_as_hour_normalises_to_utc_and_rejects_partial_hours():
    cet = timezone(timedelta(hours=1))
    assert orch.as_hour(datetime(2026, 3, 2, 6, tzinfo=cet)) == H
    assert orch.as_hour(datetime(2026, 3, 2, 5)) == H
    assert orch.as_hour("2026-03-02T05") == H
    with pytest.raises(ValueError, match="whole hour"):
        orch.as_hour(datetime(2026, 3, 2, 5, 30, tzinfo=UTC))
    assert orch.as_day("2026-03-02") == orch.as_day(H) == date(2026, 3, 2)


def test_dag_start_from_environment(monkeypatch):
    monkeypatch.delenv(orch.DAG_START_ENV, raising=False)
    assert orch.dag_start() == datetime(2026, 1, 1, tzinfo=UTC)
    monkeypatch.setenv(orch.DAG_START_ENV, "2025-06-30T13:20")
    assert orch.dag_start() == datetime(2025, 6, 30, 13, tzinfo=UTC)
    monkeypatch.setenv(orch.DAG_START_ENV, "June")
    with pytest.raises(ValueError, match="ADSTATS_DAG_START"):
        orch.dag_start()


def test_failure_message_names_task_and_hour():
    class TI:
        dag_id, task_id, try_number = "ad_stats_hourly", "check_hour", 2

    msg = orch.describe_failure({"task_instance": TI(), "data_interval_start": H,
                                 "exception": orch.DataQualityError("quarantine 9%")})
    assert msg == ("ad_stats_hourly.check_hour failed for 2026-03-02T05 (try 2): "
                   "DataQualityError: quarantine 9%")


# ------------------------------------------------------------------------------ the runner
def test_airflow_runner_environment_is_loopback_sqlite_and_repo_dags(tmp_path, monkeypatch):
    monkeypatch.setenv("ADSTATS_AIRFLOW_HOME", str(tmp_path / "af"))
    home = airflow_runner.airflow_home()
    assert home == tmp_path / "af"
    env = airflow_runner.airflow_env(home, port=18080, base={"PATH": "/usr/bin"})
    assert env["AIRFLOW_HOME"] == str(home)
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(Path(__file__).parents[1] / "dags")
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["PATH"].split(":")[0].endswith("bin") and env["PATH"].endswith(":/usr/bin")
    commands = airflow_runner.components(18080)
    assert commands["api-server"][-4:] == ["--host", "127.0.0.1", "--port", "18080"]
    assert "--skip-serve-logs" in commands["scheduler"]
    assert "--skip-serve-logs" in commands["triggerer"]
    assert airflow_runner.admin_login(home) is None
    home.mkdir()
    (home / airflow_runner.PASSWORD_FILE).write_text('{"admin": "s3cret"}')
    assert airflow_runner.admin_login(home) == ("admin", "s3cret")


def test_runner_registers_the_airflow_subcommand():
    import argparse

    parser = argparse.ArgumentParser()
    airflow_runner.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["airflow", "--port", "18081"])
    assert args.port == 18081 and not args.standalone and callable(args.func)


def test_archive_behind_the_realtime_query_holds_the_watermark_back(tmp_path):
    from speed_layer.stream import _covers

    def progress(offsets: dict) -> dict:
        return {"sources": [{"endOffset": json.dumps({"t": offsets})}]}

    assert _covers(progress({"0": 10, "1": 5}), progress({"0": 10, "1": 5}))
    assert not _covers(progress({"0": 10, "1": 4}), progress({"0": 10, "1": 5}))
    assert not _covers(None, progress({"0": 1}))
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"watermark": "2026-03-02T06:20:00Z", "archived_watermark": None}))
    assert orch.read_watermark(path) is None
    path.write_text(json.dumps({"watermark": "2026-03-02T06:20:00Z",
                                "archived_watermark": "2026-03-02T06:05:00Z"}))
    assert orch.read_watermark(path).isoformat().startswith("2026-03-02T06:05")


def test_master_lock_excludes_a_second_writer(tmp_path):
    import fcntl

    from batch_layer.master import master_lock

    with master_lock(tmp_path / "master"):
        with (tmp_path / "master" / "_lock").open("a") as other:  # another ingest or batch run
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with (tmp_path / "master" / "_lock").open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
