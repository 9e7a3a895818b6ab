# gait — the whole pipeline from one make. Every target creates .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SEED   ?= 0
WORKERS ?= 2

.PHONY: install test lint format demo bench clean

install: $(STAMP)

# Re-install only when the package metadata or the pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# At this stage the demo synthesizes a CASIA-B-layout tree, packs it and summarizes the pack.
demo: install
	$(BIN)/gait synth casia-b build/demo/raw --subjects 24 --frames 30 --seed $(SEED) --workers $(WORKERS) --overwrite
	$(BIN)/gait synth summary build/demo/raw
	$(BIN)/gait prep casia-b build/demo/raw build/demo/casia-b.h5 --workers $(WORKERS) --overwrite
	$(BIN)/gait inspect build/demo/casia-b.h5 --montage build/demo/pack-montage.png

bench: install
	$(BIN)/python bench/synth_bench.py
	$(BIN)/python bench/prep_bench.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/gei_baseline.py

clean:
	rm -rf build runs bench/results .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
