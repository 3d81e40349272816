# Two commands set up a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The pinned torch first: a bare `torch` requirement would pull CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py --out demo_out

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# mypy over the installed package's names (fcnrs.<room>): the rooms sit at the
# top of the repository and install under fcnrs, so a folder of links stands in.
ROOMS := fcn_model pipeline training gis synthetic demo jobs
typecheck: $(STAMP)
	@mkdir -p .mypy_src/fcnrs
	@for room in $(ROOMS); do [ -d $$room ] && ln -sfn ../../$$room .mypy_src/fcnrs/$$room; done; true
	$(BIN)/mypy $(foreach room,$(ROOMS),$(if $(wildcard $(room)),-p fcnrs.$(room)))

clean:
	rm -rf $(VENV) demo_out .mypy_src .mypy_cache
