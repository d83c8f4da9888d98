# Event Bus: `make run` starts the server, `make test` runs the tests.
# Both set up .venv first when it is missing or requirements.txt or
# pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: install run test lint bench bench-smoke clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# The project root on the venv's path: `import eventbus` and twistd's
	# plugin lookup (twisted/plugins/ under every path entry) find it.
	echo "$(CURDIR)" > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/eventbus-project.pth"
	# The project itself, editable: puts the `eventbus` command in $(BIN).
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: install
	$(BIN)/twistd -n eventbus $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check eventbus tests bench twisted

# The load generator is C (a Python client would be the bottleneck); the
# chart needs matplotlib, which the server and the tests do not.
bench: install
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	mkdir -p bench/results/bin
	$(CC) -O2 -Wall -o bench/results/bin/loadgen bench/loadgen.c -lpthread
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis twisted/plugins/dropin.cache
