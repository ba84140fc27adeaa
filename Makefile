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
	$(VENV)/bin/odepolicy train experiments/demo_swimmer.yaml --out runs --name demo --overwrite
	$(VENV)/bin/odepolicy evaluate runs/demo --episodes 5
	$(VENV)/bin/odepolicy plot runs/demo --out runs/demo/reward_curve.png
	@echo "reward curve written to runs/demo/reward_curve.png"

bench: $(STAMP)
	$(VENV)/bin/odepolicy bench --env HalfCheetah-v5 --policy iso_odetoode --perturbations 8 100

clean:
	rm -rf $(VENV) runs .pytest_cache
