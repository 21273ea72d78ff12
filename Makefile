# Every target sets itself up on a fresh machine: a virtual environment in .venv, then the package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCALE ?= cpu
TEST_WORKERS ?= 2

.PHONY: install test lint reproduce bench gpu-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch and torchvision as the pair that lies on this kind of machine's disk (works with torch-fidelity)
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install -q torch torchvision
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Two pytest-xdist workers; the tests of a file stay on one worker (tests/conftest.py). TEST_WORKERS=0: one process.
SLURM_TESTS := tests/test_slurm.py tests/test_slurm_distributed.py

test: $(STAMP)
	$(BIN)/ruff check dynamics experiments tests benchmarks
	$(BIN)/python -m pytest -x -n $(TEST_WORKERS) --dist loadgroup tests $(SLURM_TESTS:%=--ignore=%)
	# the real-SLURM tests on their own, after the rest: with the other worker busy beside them, the fault test's
	# preempted run was submitted a second time (CHANGELOG, "SLURM queue reading")
	$(BIN)/python -m pytest -x $(SLURM_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check dynamics experiments tests benchmarks

reproduce: $(STAMP)
	$(BIN)/dynamics reproduce --scale $(SCALE)

bench: $(STAMP)
	$(BIN)/python benchmarks/step_cost.py

# The GPU path in one command (CUDA if present, else tiny CPU sizes): record in gpu_check.json, table on stdout.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --json gpu_check.json $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) results
