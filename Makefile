# emlive: `make demo` and `make test` work on a machine with only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install demo test clean lock

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

demo: install
	$(BIN)/emlive demo

# The example plugin (examples/plugin-step) is installed for the tests: they run its step
# through emlive as a facility's own plugin would run.
$(VENV)/.plugin-example: $(VENV)/.installed examples/plugin-step/pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps -e examples/plugin-step
	touch $@

test: install $(VENV)/.plugin-example
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Re-pin requirements.lock after changing dependencies in pyproject.toml.
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) emlive-demo build *.egg-info src/*.egg-info
