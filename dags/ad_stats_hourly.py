"""
### ad_stats_hourly — exact recompute of one UTC hour

Each run owns its data interval, the hour `[H, H+1h)` (a cron *data-interval* timetable, so
`data_interval_start` is H and the run starts right after H+1h):

1. **wait_for_hour** (sensor, reschedule mode): the hour's landing file(s) are in
   `ADSTATS_LANDING_DIR` and/or the speed layer's watermark is past H+1h + grace
   (`ADSTATS_HOUR_READY`, see docs/airflow.md).
2. **ingest_hour**: the hour's landing file(s) -> master dataset (idempotent).
3. **check_hour**: gates — input events > 0 (or the param `allow_empty`), quarantine share
   below `ADSTATS_MAX_QUARANTINE_SHARE` (5 %). A failed gate fails the run without retry and
   the hour is **not** recorded exact (the serving layer keeps serving speed rows).
4. **recompute_hour**: exact batch rows, then the hour's `batch_periods` row (= exact).
5. **reconcile_hour**: batch vs speed counts -> `reconciliation` table.

All logic lives in `batch_layer/orchestration.py`. Backfill:
`airflow backfill create --dag-id ad_stats_hourly --from-date … --to-date …
--reprocess-behavior completed` (add `--dag-run-conf '{"wait_for_input": false}'` when the
landing files are gone but the master dataset has the hours), or without Airflow
`adstats batch range --from … --to …`.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, PokeReturnValue, dag, task
from airflow.sdk.exceptions import AirflowFailException

from batch_layer import orchestration as orch


@dag(
    dag_id="ad_stats_hourly",
    schedule=CronDataIntervalTimetable("@hourly", timezone="UTC"),
    start_date=orch.dag_start(),
    catchup=True,
    max_active_runs=int(os.environ.get("ADSTATS_DAG_MAX_ACTIVE_RUNS") or 4),
    dagrun_timeout=timedelta(hours=12),
    default_args=orch.dag_default_args(retry_minutes=1, max_retry_minutes=30),  # 1, 2, 4 … minutes
    params={
        "allow_empty": Param(
            orch.env_flag(orch.ALLOW_EMPTY_ENV), type="boolean",
            description="record an hour without input events as exact zero",
        ),
        "wait_for_input": Param(
            True, type="boolean",
            description="false: do not wait for landing files / the stream watermark (a "
            "backfill of hours already in the master dataset)",
        ),
    },
    tags=["adstats", "batch"],
    doc_md=__doc__,
)
def ad_stats_hourly() -> None:
    @task.sensor(
        mode="reschedule",
        poke_interval=orch.env_minutes("ADSTATS_HOUR_POKE_MINUTES", 5),
        timeout=orch.env_minutes("ADSTATS_HOUR_WAIT_TIMEOUT_MINUTES", 6 * 60),
        retries=0,
    )
    def wait_for_hour(data_interval_start=None, params=None) -> PokeReturnValue:
        if params and params.get("wait_for_input") is False:
            return PokeReturnValue(is_done=True, xcom_value="not waiting (wait_for_input)")
        state = orch.hour_completeness(
            data_interval_start, allow_empty=bool(params and params.get("allow_empty")) or None)
        print(f"hour {state.hour}: {'complete' if state.complete else 'waiting'} — "
              f"{state.reason}")
        return PokeReturnValue(is_done=state.complete, xcom_value=state.reason)

    @task
    def ingest_hour(data_interval_start=None) -> dict:
        return orch.ingest_hour(data_interval_start)

    @task
    def check_hour(ingested: dict, data_interval_start=None, params=None) -> dict:
        try:
            return orch.check_hour(
                data_interval_start,
                allow_empty=bool(params and params.get("allow_empty")) or None)
        except orch.DataQualityError as exc:  # data, not a flaky service: do not retry
            raise AirflowFailException(str(exc)) from exc

    @task
    def recompute_hour(checked: dict, ingested: dict, data_interval_start=None) -> dict:
        return orch.recompute_hour(data_interval_start, touched=ingested["hours_touched"])

    @task
    def reconcile_hour(recomputed: dict, data_interval_start=None, run_id=None) -> dict:
        try:
            return orch.reconcile("hour", data_interval_start, run_id=run_id)
        except orch.ReconciliationError as exc:  # recorded; the hour stays exact
            raise AirflowFailException(str(exc)) from exc

    ingested = ingest_hour()
    wait_for_hour() >> ingested
    reconcile_hour(recompute_hour(check_hour(ingested), ingested))


ad_stats_hourly()
