# Two commands a newcomer needs: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned to a release that installs everywhere we test (a local CPU wheel on CI machines).
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test test-gpu lint format clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

# `make demo MODEL=NAME` samples another bundled model (amed-deploy demo --help lists them)
demo: venv
	$(VENV)/bin/amed-deploy demo --force $(if $(MODEL),--model $(MODEL))

test: venv
	$(PY) -m pytest -q -m "not gpu" tests

test-gpu: venv
	$(PY) -m pytest -q -m gpu tests

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
