# Two commands do all the set-up on a fresh machine with Python 3.11 and make:
#   make book   - build the whole book on the generated demo cohort into _build/html
#   make test   - run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WORK ?= _work/demo

.PHONY: book test bench clean distclean

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "make: no python3.11 or python3 on PATH; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

book: $(STAMP)
	$(BIN)/persam book --work $(WORK)

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf _build book/executed

distclean: clean
	rm -rf $(VENV) _work

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run
