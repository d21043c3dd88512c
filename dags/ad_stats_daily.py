"""
### ad_stats_daily — exact recompute of one UTC day, then retire its realtime rows

Each run owns the day `[D, D+1)` (cron data-interval timetable; it starts right after
midnight UTC):

1. **wait_for_hours** (sensor, reschedule mode): all 24 hours of D are recorded exact in
   `batch_periods` — the same record the serving layer trusts, so hours recomputed by a
   backfill or by `adstats batch` count too, and an hour that failed its gates keeps the day
   waiting (and, after the timeout, failing with the missing hours named).
2. **recompute_day**: the exact daily rows (distinct users exact over the day), then the day's
   `batch_periods` row.
3. **reconcile_day**: the day's batch totals vs the sum of the speed layer's hours ->
   `reconciliation`.
4. **expire_speed_rows**: delete D's `speed_stats` partitions (writer role): batch rows now
   supersede them. Refuses unless the day and its 24 hours are recorded exact.

All logic lives in `batch_layer/orchestration.py`.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import CronDataIntervalTimetable, dag, task
from airflow.sdk.exceptions import AirflowFailException

from batch_layer import orchestration as orch


@dag(
    dag_id="ad_stats_daily",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=orch.dag_start(),
    catchup=True,
    max_active_runs=int(os.environ.get("ADSTATS_DAILY_MAX_ACTIVE_RUNS") or 2),
    dagrun_timeout=timedelta(hours=36),
    default_args=orch.dag_default_args(retry_minutes=2, max_retry_minutes=60),  # 2, 4, 8 … minutes
    tags=["adstats", "batch"],
    doc_md=__doc__,
)
def ad_stats_daily() -> None:
    @task.sensor(
        mode="reschedule",
        poke_interval=orch.env_minutes("ADSTATS_DAY_POKE_MINUTES", 10),
        timeout=orch.env_minutes("ADSTATS_DAY_WAIT_TIMEOUT_MINUTES", 24 * 60),
        retries=0,
    )
    def wait_for_hours(data_interval_start=None) -> bool:
        return orch.day_is_ready(data_interval_start)

    @task
    def recompute_day(data_interval_start=None) -> dict:
        return orch.recompute_day(data_interval_start)

    @task
    def reconcile_day(recomputed: dict, data_interval_start=None, run_id=None) -> dict:
        try:
            return orch.reconcile("day", data_interval_start, run_id=run_id)
        except orch.ReconciliationError as exc:  # recorded; the day stays exact
            raise AirflowFailException(str(exc)) from exc

    @task
    def expire_speed_rows(reconciled: dict, data_interval_start=None) -> dict:
        return orch.expire_speed_rows(data_interval_start)

    recomputed = recompute_day()
    wait_for_hours() >> recomputed
    expire_speed_rows(reconcile_day(recomputed))


ad_stats_daily()
