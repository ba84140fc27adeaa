# The two commands a newcomer needs: `make test` and `make demo`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test lint demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	MUJOCO_GL=$${MUJOCO_GL:-egl} $(VENV)/bin/pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check odepolicy tests benchmarks
	$(VENV)/bin/ruff format --check odepolicy tests benchmarks

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/odepolicy sweep experiments/demo.yaml
	$(VENV)/bin/odepolicy evaluate runs/demo/presets-HalfCheetah-v5-linear_s0 --episodes 5 --quiet
	$(VENV)/bin/odepolicy evaluate runs/demo/presets-HalfCheetah-v5-iso_odetoode_s0 --episodes 5 --quiet
	$(VENV)/bin/odepolicy plot runs/demo --out runs/demo/reward_curve.png
	@echo "reward curve written to runs/demo/reward_curve.png"

bench: $(STAMP)
	$(VENV)/bin/odepolicy bench --env HalfCheetah-v5 --policy iso_odetoode --perturbations 8 100

clean:
	rm -rf $(VENV) runs .pytest_cache
