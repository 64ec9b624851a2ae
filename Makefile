# One-command entry points. Each target creates the virtual environment if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export DS_BUILD_OPS := 0
export SAM2_BUILD_CUDA := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test bench clean-venv

$(VENV)/.installed: requirements.txt constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0 -c constraints.txt
	$(PIP) install --quiet -c constraints.txt -r requirements.txt
	# sam2's sdist would pull a CUDA torch into its build env and a CUDA torchvision at runtime.
	$(PIP) install --quiet --no-build-isolation --no-deps sam2==1.1.0
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/lens-segment --image examples/scene.png --query "$(or $(QUERY),the leftmost circle)" --out demo_out

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider test

bench: setup
	$(PY) -m benchmarks.model_latency

clean-venv:
	rm -rf $(VENV)
