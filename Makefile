# The README's two commands: `make demo` (set up, train and render on the synthetic subject)
# and `make test` (set up, run the test suite). Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint browser gpu-check

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# MediaPipe's metadata asks for opencv-contrib-python, which would overwrite nerfstudio's headless cv2
	# (and needs libGL): install it without dependencies; its small pure ones are in pyproject.toml.
	$(PY) -m pip install --quiet --no-deps "mediapipe==0.10.9"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/sahs-demo

# Headless Chromium for the viewer test: Debian's package (Playwright's own download fails offline).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# PYTEST_ARGS: more pytest arguments, e.g. PYTEST_ARGS='-m learning' (the learned-bound tests) or '-k driver'.
test: setup browser
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# On a CUDA machine: the test suite, then sahs-fast for 5 minutes at 512x512; one JSON
# (benchmarks/runs/gpu_check/gpu_check.json). Without CUDA: one line, status 2. GPU_CHECK_ARGS go to gpu_check.py.
gpu-check: setup
	bash benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

lint: setup
	$(VENV)/bin/ruff check sahs_nerfstudio tests benchmarks
	$(VENV)/bin/ruff format --check sahs_nerfstudio tests benchmarks
	$(VENV)/bin/pyright
