# Quick start:  make run   (serve, dev settings)   |   make test   (lint, types, the whole suite)
# Also:         make bench (the load benchmark, pinned and unpinned; about 18 minutes; updates docs/BENCHMARKS.md)
# Each target installs what it needs: a virtual environment from the requirements files and,
# when running as root, the system packages the tests start (memcached, redis, nginx, chromium).

PYTHON ?= python3
VENV ?= .venv
ENV ?= dev
PY := $(VENV)/bin/python
SYSTEM_PACKAGES := memcached redis-server nginx openssl wrk chromium valgrind

.PHONY: run test lint types system-packages venv bench

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt bench/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "not root: cannot install$$missing; tests that need them will skip (fail under CI=true)"; \
	  fi; \
	fi

run: venv
	$(PY) server.py --env=$(ENV)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

types: venv
	$(VENV)/bin/mypy .

test: venv system-packages lint types
	$(PY) -m pytest

$(VENV)/.bench-installed: $(VENV)/.installed bench/requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench/express/node_modules: bench/express/package-lock.json
	@if command -v npm >/dev/null; then cd bench/express && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the reference Express app is left out"; fi

bench: $(VENV)/.bench-installed system-packages bench/express/node_modules
	$(PY) bench/run.py
