# MedFL: `make demo` runs the default federated run, `make test` runs the linter, the type
# checker and the test suite.
# Both create .venv on first use and reuse it afterwards.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.medfl-installed

# Flower state and the local SuperLink's ports belong to this checkout (`:=`, so a venv
# activated from another checkout cannot redirect them): the ports are derived from the
# checkout's path, so two checkouts (or users) are unlikely to share a SuperLink.
PORT_BASE := $(shell $(PYTHON) -m medfl.localsim port)
export MEDFL_HOME := $(CURDIR)
export FLWR_HOME := $(CURDIR)/.flwr
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT := $(PORT_BASE)
export FLWR_LOCAL_CONTROL_API_PORT := $(shell echo $$(($(PORT_BASE)+1)))
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export PATH := $(BIN):$(PATH)

RUN_CONFIG ?=
PYTEST_ARGS ?=
LINT_PATHS := medfl server client tests bench deploy

.PHONY: demo test install browser lint typecheck bench bench-quick clean stop-superlink federation \
	containers

install: $(STAMP) $(FLWR_HOME)/config.toml

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,simulation]'
	$(BIN)/python -m medfl.localsim activate $(BIN)/activate
	touch $(STAMP)

$(FLWR_HOME)/config.toml: simulations/flwr-config.toml
	mkdir -p $(FLWR_HOME)
	cp simulations/flwr-config.toml $@

demo: install
	@name="demo-$$(date -u +%Y%m%d-%H%M%S)"; \
	flwr run . --stream --run-config "run-name='$$name' $(RUN_CONFIG)" && \
	$(BIN)/medfl show outputs/$$name

# Chromium renders /docs and report.html in the browser tests (tests/deploy/test_api_docs.py).
# Installed from Debian's packages where that is possible (root with apt-get); anywhere else,
# or if the install fails, those tests skip and the rest run as before.
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	    || echo "chromium could not be installed: the browser tests will skip" >&2; \
	fi

# Lint and type check first: they take seconds and fail before the suite's minutes.
test: lint typecheck browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check $(LINT_PATHS)

# What is checked, and how strictly, is in pyproject.toml ([tool.mypy]).
typecheck: install
	$(BIN)/mypy

# The containers, built and run for real (a Docker engine is needed; not part of `make test`,
# the builds take minutes): base image, the three images, a three-site federation with one
# site restarted mid-run, the bundle served, everything stopped. deploy/verify-containers.sh.
containers: install
	PYTHON=$(BIN)/python bash deploy/verify-containers.sh

stop-superlink:
	-$(PYTHON) -m medfl.localsim stop

clean: stop-superlink
	rm -rf $(VENV) $(FLWR_HOME)

# Benchmarks (never timed tests). `make bench`: the published numbers, each benchmark
# rewriting its own section of BENCHMARKS.md (a few hours on 2 cores). `make bench-quick`:
# every benchmark once at a small size (about 25 minutes), into $(QUICK_OUT), so that
# BENCHMARKS.md keeps the full figures.
QUICK_OUT ?= outputs/BENCHMARKS-quick.md

bench: install
	$(BIN)/python -m bench.accountants
	$(BIN)/python -m bench.dp_speed
	$(BIN)/python -m bench.heart_utility $(BENCH_ARGS)
	$(BIN)/python -m bench.privacy_audit $(BENCH_ARGS)
	$(BIN)/python -m bench.serve
	$(BIN)/python -m bench.imaging_utility $(BENCH_ARGS)
	$(BIN)/python -m bench.report_error $(BENCH_ARGS)
	$(BIN)/python -m bench.report_coverage
	$(BIN)/python -m bench.utility $(BENCH_ARGS)
	$(BIN)/python -m bench.fedbn
	$(BIN)/python -m bench.communication
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.deployment

bench-quick: install
	mkdir -p $(dir $(QUICK_OUT))
	$(BIN)/python -m bench.accountants --out $(QUICK_OUT)
	$(BIN)/python -m bench.dp_speed --rows 2000 --images 64 --out $(QUICK_OUT)
	$(BIN)/python -m bench.heart_utility --seeds 1 --out $(QUICK_OUT)
	$(BIN)/python -m bench.privacy_audit --seeds 1 --out $(QUICK_OUT)
	$(BIN)/python -m bench.serve --requests 50 --out $(QUICK_OUT)
	$(BIN)/python -m bench.imaging_utility --seeds 1 --scenario imaging-classification --out $(QUICK_OUT)
	$(BIN)/python -m bench.report_error --seeds 1 --out $(QUICK_OUT)
	$(BIN)/python -m bench.report_coverage --replicates 100 --out $(QUICK_OUT)
	$(BIN)/python -m bench.utility --seeds 1 --part robustness --out $(QUICK_OUT)
	$(BIN)/python -m bench.communication --quick --out $(QUICK_OUT)
	$(BIN)/python -m bench.scale --sites 10 --rounds 1 --out $(QUICK_OUT)
	$(BIN)/python -m bench.deployment --runs 1 --rounds 2 --out $(QUICK_OUT)

# The four heart-disease hospitals as a real TLS deployment on this machine (see
# deploy/README.md); every process is stopped afterwards.
federation: install
	deploy/local-federation.sh $(if $(RUN_CONFIG),--run-config "$(RUN_CONFIG)")
