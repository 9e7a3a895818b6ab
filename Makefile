# gait — the whole pipeline from one make. Every target creates .venv itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SEED   ?= 0
WORKERS ?= 2

.PHONY: install test test-fast lint format demo wild-demo pipeline bench clean

# The native int8 kernels are built by this one explicit step (a second or so when they are up
# to date; "not built" where the CPU or the compiler cannot: the PyTorch path then runs).
install: $(STAMP)
	@$(BIN)/gait build-kernels

# Re-install only when the package metadata or the pins change. (The distribution was called
# `gait` before it became `gait-toolkit`: an old editable install of that name is removed.)
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip uninstall -q -y gait 2>/dev/null || true
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q --durations=15

# The inner loop: everything but the slow, multi-process and browser tests (about a minute).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not ddp and not browser"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# prep -> train -> eval -> report on any raw tree:
#   make pipeline DATASET=casia-b RAW=path/to/CASIA-B WORK=build/casia-b [CONFIG=configs/casia-b.yaml]
# Re-running continues where it stopped (the pack is kept, the run is resumed).
DATASET ?= casia-b
CONFIG  ?= configs/tiny.yaml
TRAIN_ARGS ?=
TEST_ARGS  ?=
pipeline: install
	@test -n "$(RAW)" -a -n "$(WORK)" || { echo "usage: make pipeline DATASET=casia-b RAW=<raw tree> WORK=<folder> [CONFIG=...] [TRAIN_ARGS=...] [TEST_ARGS=...]"; exit 2; }
	test -f $(WORK)/$(DATASET).h5 || $(BIN)/gait prep $(DATASET) $(RAW) $(WORK)/$(DATASET).h5 --workers $(WORKERS)
	$(BIN)/gait train $(CONFIG) --pack $(WORK)/$(DATASET).h5 --out $(WORK)/run --seed $(SEED) $(TRAIN_ARGS) $$(test -f $(WORK)/run/config.yaml && echo --resume)
	$(BIN)/gait eval $(WORK)/run --pack $(WORK)/$(DATASET).h5 --report json --out $(WORK)/report.json $(TEST_ARGS)
	$(BIN)/gait eval $(WORK)/run --pack $(WORK)/$(DATASET).h5 --report html --out $(WORK)/report.html $(TEST_ARGS)

# The whole pipeline on synthetic data: 40 subjects, the first 20 train, the last 20 are tested;
# then the classical GEI baseline on the same sequences for scale.
DEMO := build/demo
demo: install
	$(BIN)/gait synth casia-b $(DEMO)/raw --subjects 40 --frames 30 --seed $(SEED) --workers $(WORKERS) --overwrite
	$(MAKE) --no-print-directory pipeline DATASET=casia-b RAW=$(DEMO)/raw WORK=$(DEMO) TRAIN_ARGS="--train-subjects first:20" TEST_ARGS="--test-subjects 021-040"
	$(BIN)/python bench/gei_baseline.py --subjects 40 --frames 30 --seed $(SEED) --json $(DEMO)/gei.json --compare $(DEMO)/report.json
	@echo "report: $(DEMO)/report.html"
	@echo "From a camera: five test subjects enrolled by name, a video of one of them (carrying a bag), segmented and identified:"
	rm -rf $(DEMO)/camera
	for s in 021 022 023 024 025; do for r in nm-01 nm-02; do \
	  $(BIN)/gait gallery add $(DEMO)/camera/people.h5 $(DEMO)/run person-$$s $(DEMO)/raw/$$s/$$r/090 > /dev/null || exit 1; \
	done; done
	$(BIN)/gait synth video $(DEMO)/camera/walk.mp4 --subject 23 --condition bg --seed $(SEED)
	$(BIN)/gait segment $(DEMO)/camera/walk.mp4 $(DEMO)/camera/silhouettes
	$(BIN)/gait identify $(DEMO)/run $(DEMO)/camera/people.h5 $(DEMO)/camera/silhouettes --top-k 3

# The in-the-wild pipeline on synthetic Gait3D: 300 subjects walking 2 to 6 times each (the first
# 100 train; the last 200 are tested: one probe each, as Gait3D.json says, the rest the gallery),
# prep, the tiny model, Gait3D's protocol; then the GEI baseline scored the same way for scale.
# WILD_ARGS is passed to `gait train` (e.g. WILD_ARGS="--set train.iterations=50").
WILD := build/wild-demo
WILD_ARGS ?=
wild-demo: install
	$(BIN)/gait synth gait3d $(WILD)/raw --subjects 300 --test 200 --sequences 6 --frames 30 --seed $(SEED) --workers $(WORKERS) --overwrite
	$(BIN)/gait prep gait3d $(WILD)/raw/2D_Silhouettes $(WILD)/gait3d.h5 --workers $(WORKERS) --overwrite
	$(BIN)/gait train tiny --pack $(WILD)/gait3d.h5 --out $(WILD)/run --seed $(SEED) --train-subjects first:100 $(WILD_ARGS) $$(test -f $(WILD)/run/config.yaml && echo --resume)
	$(BIN)/gait eval $(WILD)/run --pack $(WILD)/gait3d.h5 --protocol gait3d --partition $(WILD)/raw/Gait3D.json --report json --out $(WILD)/report.json
	$(BIN)/gait eval $(WILD)/run --pack $(WILD)/gait3d.h5 --protocol gait3d --partition $(WILD)/raw/Gait3D.json --report html --out $(WILD)/report.html
	$(BIN)/python bench/gei_baseline.py --pack $(WILD)/gait3d.h5 --partition $(WILD)/raw/Gait3D.json --inputs $(WILD)/gei-inputs.npz
	$(BIN)/gait score $(WILD)/gei-inputs.npz --protocol gait3d --partition $(WILD)/raw/Gait3D.json --report json --out $(WILD)/gei.json
	@echo "report: $(WILD)/report.html (the model); $(WILD)/gei.json (GEI + PCA)"

bench: install
	$(BIN)/python bench/synth_bench.py
	$(BIN)/python bench/prep_bench.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/eval_bench.py
	$(BIN)/python bench/gei_baseline.py

clean:
	rm -rf build runs bench/results .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
