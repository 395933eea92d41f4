# milter-agent — the two commands: `make run` and `make test`.
# Works on a fresh Debian 12 machine as root: creates .venv, installs, and installs the Debian
# packages the tests need (postfix, miltertest; sendmail unpacked privately, never installed)
# only when they are missing.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUNDIR := $(CURDIR)/.run
PORT   ?= 8890

.PHONY: run test lint format bench bench-micro soak man dist modules clean system-deps

$(PY):
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { [ "$$(id -u)" = 0 ] && \
		(apt-get install -y -q python3-venv || (apt-get update -q && apt-get install -y -q python3-venv)); } || \
		{ echo "make: $(PYTHON) cannot create a venv; install python3-venv" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

## run: start the daemon in the foreground with the example config on 127.0.0.1:$(PORT)
run: $(STAMP)
	@mkdir -p $(RUNDIR)
	$(PY) -m milter_agent -d 1 -u $$(id -un) -c examples/milter-agent.conf \
		-p inet:$(PORT)@127.0.0.1 -i unix:$(RUNDIR)/cmd --spool-dir $(RUNDIR)/spool

system-deps: $(STAMP)
	@scripts/ensure-postfix.sh
	@scripts/ensure-sendmail.sh >/dev/null
	@scripts/ensure-bench-peers.sh $(PY)

## test: lint, type-check and the whole suite (unit, conformance, real Postfix end-to-end)
test: $(STAMP) system-deps lint
	$(PY) -m pytest -q -p no:cacheprovider
	$(PY) bench/micro.py --quick
	$(PY) bench/mta.py --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format src tests bench tools
	$(VENV)/bin/ruff check --fix src tests bench tools

## bench: milter-agent and its peers behind a real Postfix, side by side (about 12 min; writes
## bench/results/mta/; UPDATE_DOCS=1 also refreshes docs/performance.md)
bench: $(STAMP) system-deps
	$(PY) bench/mta.py $(if $(UPDATE_DOCS),--update-docs)

## bench-micro: the daemon alone, driven with its own codec (no MTA), for profiling
bench-micro: $(STAMP)
	$(PY) bench/micro.py $(if $(UPDATE_DOCS),--update-docs)

## soak: 100,000 messages through Postfix with injected faults, then a long fuzz run of the
## session and the codec, 10,000 examples per property (not CI)
soak: $(STAMP) system-deps
	$(PY) tests/soak/soak.py --messages $(or $(SOAK_MESSAGES),100000) --progress 10000
	MA_FUZZ_EXAMPLES=$(or $(FUZZ_EXAMPLES),10000) $(PY) -m pytest -q -p no:cacheprovider \
		--timeout=0 tests/faults/test_fuzz_session.py tests/unit/protocol/test_protocol_properties.py

## man: regenerate man/ from the Markdown docs (a test checks they are in step)
man: $(STAMP)
	$(PY) tools/manpages.py man

## dist: build the sdist and the wheel into dist/
dist: $(STAMP)
	$(PY) -m build --outdir dist

## modules: build the sample C filter module modules/module_dummy.so (BUILD=DIR: into DIR)
modules:
	$(MAKE) -C modules

clean:
	rm -rf $(VENV) $(RUNDIR) build dist src/*.egg-info
