"""Airflow configuration for tests: import this module BEFORE anything imports ``airflow``.

Airflow reads ``AIRFLOW_HOME`` and its ``AIRFLOW__*`` variables once, when first imported, so
the test modules that use Airflow import this first. It gives the test session its own
AIRFLOW_HOME (SQLite metadata DB, logs) in a temporary folder, removed at exit, with the repo's
``dags/`` as the DAG folder and no example DAGs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAGS = REPO / "dags"

if "airflow" in sys.modules and not os.environ.get("ADSTATS_TEST_AIRFLOW_HOME"):
    raise RuntimeError("tests/airflow_env.py must be imported before airflow")

if not os.environ.get("ADSTATS_TEST_AIRFLOW_HOME"):
    _home = Path(tempfile.mkdtemp(prefix="adstats-test-airflow-"))
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ["ADSTATS_TEST_AIRFLOW_HOME"] = str(_home)
    os.environ.update({
        "AIRFLOW_HOME": str(_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_home / 'airflow.db'}",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    })

AIRFLOW_HOME = Path(os.environ["ADSTATS_TEST_AIRFLOW_HOME"])
