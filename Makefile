# EHCP Record: the two quickstart commands are `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test bench bench-search bench-floor bench-load bench-verify bench-encryption bench-analytics clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (or set PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# `make serve PORT=8090 HOST=0.0.0.0`; EHCP_BASE_URL (if set) is the address put in links.
PORT ?= 8080
HOST ?= 127.0.0.1
serve: $(STAMP)
	$(BIN)/ehcp-record serve --host $(HOST) --port $(PORT)

# Two workers, each with its own embedded mongod; a test module stays on one worker (its server
# and data are module fixtures). The schemathesis module runs after, in one process: its cases
# are generated per operation at run time, which pytest-xdist cannot hand out. TEST_WORKERS=0
# runs everything in one process.
TEST_WORKERS ?= 2
FUZZ := tests/api/test_schemathesis.py
test: $(STAMP)
ifeq ($(TEST_WORKERS),0)
	$(BIN)/pytest
else
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --ignore=$(FUZZ)
	$(BIN)/pytest $(FUZZ)
endif

bench: $(STAMP)
	$(BIN)/python bench/bench.py

# Search at 2,000 and 20,000 records beside raw pymongo (~25 min on 2 cores); BENCH_ARGS=--quick for a smoke run.
BENCH_ARGS ?=
bench-search: $(STAMP)
	$(BIN)/python bench/search.py $(BENCH_ARGS)

# Mixed load (parents, LA, health, schools) for 600 s at 16 clients, then every audit chain;
# LOAD_ARGS="--quick" for 30 s, or e.g. LOAD_ARGS="--seconds 120 --clients 16".
LOAD_ARGS ?=
bench-load: $(STAMP)
	$(BIN)/python bench/load.py $(LOAD_ARGS)

# The identifier search as served, as a bare app on the same stack (bench/floor_app.py) and as
# raw pymongo, in turns at 1 and 8 clients (~5 min).
bench-floor: $(STAMP)
	$(BIN)/python bench/floor.py

bench-verify: $(STAMP)
	$(BIN)/python bench/verify.py

# Read, write and search throughput with encryption at rest on and off, side by side (~3 min);
# ENC_ARGS=--quick for a smoke run.
ENC_ARGS ?=
bench-encryption: $(STAMP)
	$(BIN)/python bench/encryption.py $(ENC_ARGS)
# The analytics extract: build and measure evaluation times at 2,000 and 20,000 children (~5 min);
# BENCH_ARGS="--sizes 2000" for a quick run.
bench-analytics: $(STAMP)
	$(BIN)/python bench/analytics.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
