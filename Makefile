# The README's commands. `make test` and `make demo` work on a fresh clone: they run `setup`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup jars test lint unit demo demo-down stack-up stack-down clean

setup: $(STAMP) jars

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "adstats needs Python >= 3.11"'
	@command -v java >/dev/null || { echo "java (17+) is required"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven (mvn) is required"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,airflow]'
	touch $(STAMP)

# Maven resolves the Kafka, Cassandra and Spark-Kafka jars once into $ADSTATS_HOME/jars.
jars: $(STAMP)
	$(BIN)/adstats jars

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/pytest -m "not stack"

test: setup lint
	$(BIN)/pytest

stack-up: setup
	$(BIN)/adstats stack up

stack-down:
	$(BIN)/adstats stack down

# The whole lambda loop on the local stack (see README); `make demo-down` stops everything.
demo: setup
	$(BIN)/adstats demo

demo-down:
	$(BIN)/adstats demo down

clean:
	rm -rf $(VENV) build *.egg-info

# Local Airflow with the DAGs in dags/ (SQLite under $ADSTATS_HOME/airflow, UI on
# http://127.0.0.1:8080, login printed); Ctrl-C stops it. See docs/airflow.md.
.PHONY: airflow
airflow: setup
	$(BIN)/adstats airflow
