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

# The main job on the built-in tiny model: two ranks over gloo on the CPU (any machine), the
# latents kept next to the video. About 30 s on 2 CPU cores.
demo: venv
	mkdir -p out
	$(VENV)/bin/wanctl generate --model tiny --device cpu --gpus 2 --size 512*288 --frames 49 \
		--steps 20 --prompt "a red fox running through fresh snow at golden hour" -o out/demo.mp4 \
		--overwrite

# Two pytest workers, each taking whole test files (module fixtures built once): much of the
# suite waits on the processes it starts; 516 s instead of 716 s on 2 CPU cores (2026-12-03).
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: venv
	$(VENV)/bin/ruff check wanctl tests benchmarks
	$(VENV)/bin/ruff format --check wanctl tests benchmarks
	$(VENV)/bin/mypy wanctl benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
