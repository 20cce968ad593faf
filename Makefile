# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench golden clean system-test-deps system-bench-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

## run: install, then run the publisher on the sample content with the built-in defaults
## (the daemon, and the site with sign-up on http://127.0.0.1:8000/)
run: $(STAMP)
	$(VENV)/bin/publisher subscribers import examples/subscribers.csv
	$(VENV)/bin/publisher run --serve

## system-test-deps: Debian packages the tests drive (the browser), installed where missing
system-test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) chromium fonts-dejavu-core; }

## system-bench-deps: Debian packages the benchmarks drive (wrk, for benchmarks/web.py;
## postfix's smtp-sink and smtp-source, for benchmarks/send.py: its mail daemon is stopped again)
system-bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) wrk; }
	@command -v smtp-sink >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin" command -v smtp-sink \
		>/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) postfix \
		&& { $(SUDO) postfix stop >/dev/null 2>&1 || true; }; }

## test: install what the tests need, then run them (no tests collected is a failure)
test: $(STAMP) system-test-deps
	$(VENV)/bin/pytest

## lint: ruff and mypy
lint: $(STAMP)
	$(VENV)/bin/ruff check publisher tests benchmarks
	$(VENV)/bin/mypy

## golden: rewrite the golden feed and email files from the current code
golden: $(STAMP)
	UPDATE_GOLDEN=1 $(VENV)/bin/pytest -q -m golden tests

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
