# make run  : create .venv if missing, install, run the demo pipeline (dvc repro, one Prefect server for all stages)
# make test : create .venv if missing, install, run the tests
# make lint : ruff, as CI runs it
VENV   := .venv
STAMP  := $(VENV)/.installed
PYTHON ?= python3

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_SITE_CACHE_DIR := $(CURDIR)/.dvc/tmp/site-cache
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup run test lint clean

$(STAMP): pyproject.toml
	@start=$$(date +%s); \
	test -d $(VENV) || $(PYTHON) -m venv $(VENV); \
	$(VENV)/bin/pip install -q --disable-pip-version-check -e ".[pipeline,serve,test]" && touch $(STAMP) && \
	echo "set-up: $$(( $$(date +%s) - start )) s"

setup: $(STAMP)

run: setup
	@start=$$(date +%s); python -m flows.server dvc repro && echo "pipeline: $$(( $$(date +%s) - start )) s" && uniadc report

test: setup
	pytest -q

lint: setup
	ruff check .

clean:
	rm -rf data/raw data/prepared data/synthetic data/models data/reports mlflow.db mlartifacts
