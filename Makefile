PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/privacy-ledger demo --out demo-out

lint: $(STAMP)
	$(BIN)/ruff check daemon connectors sandbox tests bench

test: $(STAMP) lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) demo-out
