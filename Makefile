# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench golden catalogs clean system-test-deps system-bench-deps

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

## system-test-deps: Debian packages the tests drive (the browser, the spam filter, curl as
## feed readers fetch, the IMAP server), installed where missing. The tests start Dovecot on
## their own; the system service the package starts is stopped again.
system-test-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) chromium fonts-dejavu-core; }
	@command -v spamassassin >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) spamassassin; }
	@command -v curl >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) ca-certificates curl; }
	@PATH="$$PATH:/usr/sbin" command -v dovecot >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) dovecot-imapd \
		&& { $(SUDO) env PATH="$$PATH:/usr/sbin" dovecot stop >/dev/null 2>&1 || true; }; }

## system-bench-deps: Debian packages the benchmarks drive (wrk, for benchmarks/web.py;
## postfix's smtp-sink and smtp-source, for benchmarks/send.py and million.py; hugo, for
## benchmarks/build.py).
## Postfix is installed unconfigured ("No configuration"): its mail daemon never starts, and a
## daemon started by an earlier install is stopped.
system-bench-deps:
	@command -v wrk >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) wrk; }
	@command -v smtp-sink >/dev/null 2>&1 || PATH="$$PATH:/usr/sbin" command -v smtp-sink \
		>/dev/null 2>&1 || { \
		echo "postfix postfix/main_mailer_type select No configuration" \
			| $(SUDO) debconf-set-selections \
		&& $(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) postfix; }
	@{ PATH="$$PATH:/usr/sbin" postfix status >/dev/null 2>&1 \
		&& $(SUDO) env PATH="$$PATH:/usr/sbin" postfix stop >/dev/null 2>&1; } || true
	@command -v hugo >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && $(SUDO) $(APT_INSTALL) hugo; }

## bench: install what the benchmarks compare against, then run every benchmark; each prints
## our figure, the baseline measured in the same run and the ratio (benchmarks/README.md)
bench: $(STAMP) system-bench-deps
	$(PY) benchmarks/build.py
	$(PY) benchmarks/calendar_day.py
	$(PY) benchmarks/send.py --memory
	$(PY) benchmarks/send.py --rtt 20 --connections 1,16,64
	$(PY) benchmarks/million.py --rtt 20
	$(PY) benchmarks/preferences.py
	$(PY) benchmarks/mail_messages.py
	$(PY) benchmarks/tick.py
	$(PY) benchmarks/web.py

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

## catalogs: extract the strings of the templates and the code into publisher/locale/messages.pot,
## merge them into each language's messages.po, and compile the .mo files the package loads
catalogs: $(STAMP)
	$(VENV)/bin/pybabel extract -F babel.cfg -c Translators: --add-location=file --sort-by-file \
		--project=anniversary-publisher --copyright-holder="the anniversary-publisher authors" \
		-o publisher/locale/messages.pot .
	$(VENV)/bin/pybabel update -i publisher/locale/messages.pot -d publisher/locale \
		--ignore-obsolete
	$(VENV)/bin/pybabel compile -d publisher/locale --statistics
