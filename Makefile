# Set-up and everyday commands. A fresh machine needs only python3 (>=3.10) and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch and the packages built against it (torchvision, pulled by onnx2torch) are pinned
# together in constraints.txt: the CPU build of torch, no nvidia-* package.
CONSTRAINTS := constraints.txt

.PHONY: install browser test test-fast demo lint bench clean check-cpu layout gallery

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) torch
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[all]"
	$(MAKE) --no-print-directory check-cpu
	touch $@

# Fails when a CUDA package reached the environment (7 GB that a CPU machine never uses).
check-cpu:
	@! $(PIP) list 2>/dev/null | grep -i '^nvidia-' || { echo "CUDA packages installed (see above): torch or a package depending on it escaped constraints.txt"; exit 1; }
	@$(PY) -c "import torch, sys; v = torch.__version__; print('torch', v, 'CUDA', torch.version.cuda); sys.exit(torch.version.cuda is not None)"

install: $(VENV)/.installed

# The HTML report's and the dashboard's tests render them in headless Chromium (Debian's
# `chromium`). Installed here when missing, as root, with apt-get; never fails the build
# (without it those tests are skipped).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get \
		>/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium >/dev/null; } || echo "chromium not installed: the browser test is skipped"

# Everything, as CI runs it, with the 25 slowest tests listed.
test: install browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q --durations=25

# The development loop: every test but the slow ones (calibration replicas, browsers, the
# wheel built and installed), a few minutes on 2 cores.
test-fast: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -m "not slow" --durations=10

# The MET-scale systematic's files (the simulation with met scaled by ±5%), made on demand.
MET_VARIATIONS := sample_data/sim_met_up.parquet sample_data/sim_met_down.parquet
$(MET_VARIATIONS) &: sample_data/sim.parquet sample_data/generate.py
	$(PY) sample_data/generate.py --met-variations

# The sample analysis (sample_data/analysis.yaml): the network audited, the signal region
# blinded, the MET-scale and per-process normalisation systematics.
demo: install $(MET_VARIATIONS)
	$(VENV)/bin/validator run --config sample_data/analysis.yaml --db demo.duckdb

# README's layout block, written from the package (docs/layout.py).
layout: install
	$(PY) docs/layout.py >/dev/null

# docs/gallery.md and docs/gallery/*.png: each figure type once, from a run of the sample
# analysis (docs/gallery.py; about 2.5 minutes).
gallery: install $(MET_VARIATIONS)
	$(PY) docs/gallery.py

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_run.py

clean:
	rm -rf $(VENV) demo.duckdb validation.duckdb
