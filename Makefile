# `make demo` and `make test` each set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow setup clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,torch,jax]" "torch==2.13.0"
	touch $(STAMP)

setup: $(STAMP)

# The demo prints stepnorm's own lines only; the gated run must exit 1 (the planted mismatch), so
# any other exit code (a crash is 2) fails the demo instead of being ignored.
demo: $(STAMP)
	@echo "--- stepnorm sample demo_out/sample: the built-in sim/real mixture"
	@$(BIN)/stepnorm sample demo_out/sample
	@echo "--- stepnorm run: the gate catches the sample's sim/real gripper and workspace mismatch (exit 1, nothing normalized)"
	@$(BIN)/stepnorm run demo_out/sample/config.yaml --out demo_out/run; test $$? -eq 1
	@echo "--- the same run with --force (statistics reused from the cache)"
	@$(BIN)/stepnorm run demo_out/sample/config.yaml --out demo_out/run --force

# The report test opens the HTML report in headless Chromium (Debian's package).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) demo_out .pytest_cache
