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

# docker/requirements.lock: every package the cluster image installs besides torch/torchvision, pinned with hashes
# (docker/Dockerfile installs it with --no-deps --require-hashes). Resolved by uv (installed under build/, not into
# the venv) for the image's Python and platform from pyproject.toml's dependencies + the trackers extra + ray[all]
# (what Ray's image carries), at the versions this venv runs where it has them (its `pip freeze` as constraints:
# the image runs what the tests ran). torch/torchvision and the CUDA 13 runtime that their PyPI build pins are left
# out: the image takes torch from PyTorch's CUDA 12.8 index, with that build's own runtime pins. Wheels only.
LOCK     := docker/requirements.lock
LOCK_TMP := build/lock
UV       := $(LOCK_TMP)/uv/bin/uv

.PHONY: lock

$(UV):
	$(PYTHON) -m pip install --quiet --target $(LOCK_TMP)/uv uv==0.13.9

lock: $(STAMP) $(UV)
	mkdir -p $(LOCK_TMP)
	$(PY) -m pip freeze --exclude-editable | grep -v -E '^(torch|torchvision)==' > $(LOCK_TMP)/venv-constraints.txt
	printf '%s\n' cuda-toolkit cuda-bindings nvidia-cudnn-cu13 nvidia-cusparselt-cu13 nvidia-nccl-cu13 \
	    nvidia-nvshmem-cu13 > $(LOCK_TMP)/cuda13-runtime.txt
	echo 'ray[all]' | $(UV) pip compile pyproject.toml - --extra trackers \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_35 --only-binary :all: \
	    --constraints $(LOCK_TMP)/venv-constraints.txt --excludes $(LOCK_TMP)/cuda13-runtime.txt \
	    --no-emit-package torch --no-emit-package torchvision \
	    --generate-hashes --no-header --quiet -o $(LOCK_TMP)/requirements.lock
	{ printf '%s\n' \
	    '# The cluster image: every Python package besides torch/torchvision, all transitive pins with hashes, for' \
	    '# Python 3.11 on Linux x86_64 (manylinux_2_35, wheels only); docker/Dockerfile installs it with' \
	    '# pip install --no-deps --require-hashes -r docker/requirements.lock' \
	    '# Regenerate with `make lock` (never edit by hand): uv pip compile of pyproject.toml, its trackers extra and' \
	    '# ray[all] (what the Ray base image carries), at the dev venv versions where the venv has the package.' \
	    '# Left out: torch and torchvision (installed from the PyTorch CUDA 12.8 index with the CUDA runtime wheels' \
	    '# that build pins), the CUDA 13 runtime of their PyPI build and the dev tools (pytest, ruff, hypothesis,' \
	    '# robustbench).'; \
	  cat $(LOCK_TMP)/requirements.lock; } > $(LOCK)
