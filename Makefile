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

# The main job on the embedded default (offline digits, CPU): meta-train the PPO agent on digits tasks, fine-tune
# on a held-out one, then train + attack the chosen sub-network next to the teacher and a uniform shrink.
run: $(STAMP)
	$(PY) train.py --out runs/digits

test: $(STAMP)
	$(VENV)/bin/ruff check rcnas envs agents tests bench train.py evaluate.py
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) bench/train_throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check rcnas envs agents tests bench train.py evaluate.py
