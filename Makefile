# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what they need (a virtual environment, pip packages, openssh-server, Azurite, Chromium).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
AZURITE := $(VENV)/node/node_modules/.bin/azurite-blob
# the last Azurite that runs on Node 20 (3.36 wants Node 21+)
AZURITE_VERSION := 3.35.0

.PHONY: demo test lint deps sshd azurite chromium bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,azure,aws,gcp]'
	$(PY) -m compileall -q src >/dev/null  # editable installs compile nothing: spare each CLI call the work
	touch $(STAMP)

deps: $(STAMP) sshd azurite chromium

# A real OpenSSH sshd stands in for each local CVM.
sshd:
	@if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then \
	  echo "installing openssh-server (the local provider runs a real sshd per CVM)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q openssh-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q openssh-server >/dev/null; }; \
	fi

# Debian's Chromium: the dashboard's tests (tests/browser) and bench/dashboard.py drive it through
# Playwright, which is never asked to download a browser of its own.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing chromium (the dashboard's tests run in a real browser)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; }; \
	fi

# Azurite (Microsoft's Azure Storage emulator, from npm) stands in for Azure Blob Storage in the
# tile publication tests (tests/fakes/object_stores.py finds it under $(VENV)/node).
azurite: $(AZURITE)

$(AZURITE):
	@if ! command -v npm >/dev/null 2>&1; then \
	  echo "installing nodejs and npm (Azurite, the Azure Storage emulator, runs on Node)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q nodejs npm >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q nodejs npm >/dev/null; }; \
	fi
	npm install --prefix $(VENV)/node --no-audit --no-fund --loglevel=error azurite@$(AZURITE_VERSION)

demo: deps
	$(VENV)/bin/duet demo

# Lint and types first: CI (.ci/run = make test) fails on a lint or type error before any test runs.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

test: deps lint
	$(PY) -m pytest -q

bench: deps
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
