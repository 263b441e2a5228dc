# The two commands a newcomer needs: `make demo` and `make test`.
# Both install what they need (a virtual environment, pip packages, openssh-server).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint deps sshd bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,azure,aws,gcp]'
	$(PY) -m compileall -q src >/dev/null  # editable installs compile nothing: spare each CLI call the work
	touch $(STAMP)

deps: $(STAMP) sshd

# A real OpenSSH sshd stands in for each local CVM.
sshd:
	@if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then \
	  echo "installing openssh-server (the local provider runs a real sshd per CVM)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y -q openssh-server >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q openssh-server >/dev/null; }; \
	fi

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
