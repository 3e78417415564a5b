# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned to the CPU build this machine keeps on disk; elsewhere set
# TORCH to the build you want (e.g. make demo TORCH="torch==2.13.0+cpu" with a CPU index).
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test test-all lint clean browser

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/audiovit demo --out runs/demo

# The page test drives Debian's chromium; ffmpeg lets the decoder read m4a and friends. Both are
# installed when this runs as root with apt-get, and their tests are skipped where they can't be.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v ffmpeg >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver ffmpeg >/dev/null; \
	else echo "note: chromium/chromedriver/ffmpeg missing; their tests will be skipped"; fi

test: $(VENV)/.test-installed browser
	$(PY) -m pytest -q

test-all: $(VENV)/.test-installed browser  ## the long variants too
	$(PY) -m pytest -q -m ""

# ruff is pinned: a new release's rules must not turn CI red on code that has not changed.
lint: $(VENV)/.test-installed
	$(PIP) install -q ruff==0.17.6
	$(VENV)/bin/ruff check src tests benchmarks && $(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
