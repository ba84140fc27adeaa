# The two commands a newcomer needs: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install install-warp test test-warp lint demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The optional MuJoCo Warp engine (`physics: warp`). With it installed, `make test` also runs
# tests/test_warp_engine.py on Warp's CPU device; without it those tests skip.
install-warp: $(STAMP)
	$(PIP) install --quiet -e ".[warp]"

# With the warp extra installed, its tests (mostly Warp's one-off kernel compile, about 2 min on
# a fresh machine) run as a second process beside the rest of the suite, on the second core.
test: $(STAMP)
	@export MUJOCO_GL=$${MUJOCO_GL:-egl}; warp=; \
	if $(PY) -c "import mujoco_warp" 2>/dev/null; then \
		$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_warp_engine.py > .warp-tests.log 2>&1 & warp=$$!; \
	fi; \
	$(VENV)/bin/pytest -q tests --ignore=tests/test_warp_engine.py; rc=$$?; \
	if [ -n "$$warp" ]; then \
		wait $$warp; wrc=$$?; echo "-- tests/test_warp_engine.py (run beside the rest):"; \
		cat .warp-tests.log; rm -f .warp-tests.log; [ $$wrc -eq 0 ] || rc=1; \
	fi; \
	exit $$rc

# Only the MuJoCo Warp tests (installs the extra first).
test-warp: install-warp
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(VENV)/bin/pytest -q tests/test_warp_engine.py

lint: $(STAMP)
	$(VENV)/bin/ruff check odepolicy tests benchmarks
	$(VENV)/bin/ruff format --check odepolicy tests benchmarks

# Each evaluation is also kept beside its run (evaluation.txt), so the numbers it prints can be
# read again later.
DEMO_RUNS := presets-HalfCheetah-v5-linear_s0 presets-HalfCheetah-v5-iso_odetoode_s0
demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/odepolicy sweep experiments/demo.yaml
	@set -e; for run in $(DEMO_RUNS); do \
		$(VENV)/bin/odepolicy evaluate runs/demo/$$run --episodes 5 --quiet \
			> runs/demo/$$run/evaluation.txt; \
		cat runs/demo/$$run/evaluation.txt; \
	done
	$(VENV)/bin/odepolicy plot runs/demo --out runs/demo/reward_curve.png
	@echo "reward curve written to runs/demo/reward_curve.png"

bench: $(STAMP)
	$(VENV)/bin/odepolicy bench --env HalfCheetah-v5 --policy iso_odetoode --perturbations 8 100

clean:
	rm -rf $(VENV) runs .pytest_cache
