# The two README commands. Each creates the virtual environment and installs the project on first use (about
# 3 minutes, 6 GB: torch is a CUDA build); afterwards the install step is skipped unless pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-slow bench lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job on the embedded default (offline digits, CPU): train and attack a shipped sub-network.
# aa_compact, not standard AutoAttack: on a robust model Square-5000 and FAB-T alone take ~8 minutes here.
run: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) evaluate.py configs/subnets/digits/tiny-444-half.yaml \
		--task configs/tasks/digits-pgd-e20-t444-r35.yaml --attacks clean,fgsm,pgd20,cw40,aa_compact \
		--out runs/readme-eval

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q

test-slow: $(STAMP)
	RAY_AUTH_MODE=disabled $(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/train_throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check rcnas envs agents tests bench train.py evaluate.py
