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
run: $(STAMP)
	$(VENV)/bin/publisher build
	$(PY) -m http.server 8000 --bind 127.0.0.1 --directory var/site

## system-test-deps: Debian packages the tests drive (the browser), installed where missing
system-test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) chromium fonts-dejavu-core; }

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
