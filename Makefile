# The set-up contract: `make demo` and `make test` work from a fresh clone, nothing else needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Where no NVIDIA GPU is present, take the CPU build of torch first (it lies on local disk on
# CI machines); an unpinned torch would pull a multi-GB CUDA build.
CPU_TORCH ?= torch==2.13.0
HAVE_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: venv demo test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(HAVE_GPU),,$(PIP) install -q $(CPU_TORCH))
	$(PIP) install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/wanctl doctor; test $$? -le 1

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check wanctl tests benchmarks
	$(VENV)/bin/ruff format --check wanctl tests benchmarks
	$(VENV)/bin/mypy wanctl

clean:
	rm -rf $(VENV) build *.egg-info
