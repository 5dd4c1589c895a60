# `make demo` and `make test` each set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow setup clean browser lerobot-env

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,torch,jax,dask,gcs]" "torch==2.13.0"
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

# LeRobot's real processor pipeline and ACT policy for tests/test_lerobot_integration.py, in a venv of their own:
# lerobot 0.4.4 (the newest for Python 3.11) pins torch<2.11, and the only CPU torch wheel here is 2.13.0,
# so lerobot goes in with --no-deps beside the pinned set of what its processor and policy code imports
# (tests/lerobot_env/requirements.txt). pip's wheel cache makes a rebuild quick; each install is bounded
# in time and any failure stops `make test` (the stamp is written only after an import check).
LEROBOT_VENV := .venv-lerobot
LEROBOT_STAMP := $(LEROBOT_VENV)/.installed
$(LEROBOT_STAMP): tests/lerobot_env/requirements.txt
	rm -rf $(LEROBOT_VENV)
	$(PYTHON) -m venv $(LEROBOT_VENV)
	timeout 1200 $(LEROBOT_VENV)/bin/pip install --quiet -r tests/lerobot_env/requirements.txt
	timeout 300 $(LEROBOT_VENV)/bin/pip install --quiet --no-deps lerobot==0.4.4
	PYTHONPATH=src $(LEROBOT_VENV)/bin/python tests/lerobot_env/check_lerobot.py --imports-only
	touch $(LEROBOT_STAMP)

lerobot-env: $(LEROBOT_STAMP)

test: $(STAMP) browser $(LEROBOT_STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(LEROBOT_VENV) demo_out .pytest_cache
