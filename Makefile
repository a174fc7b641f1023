# Set-up and everyday commands. A fresh machine needs only python3 (>=3.10) and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU build of torch, pinned: an unpinned torch pulls several GB of CUDA packages.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install browser test demo lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[all]"
	touch $@

install: $(VENV)/.installed

# The HTML report's and the dashboard's tests render them in headless Chromium (Debian's
# `chromium`). Installed here when missing, as root, with apt-get; never fails the build
# (without it those tests are skipped).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get \
		>/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		chromium >/dev/null; } || echo "chromium not installed: the browser test is skipped"

test: install browser
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

# The MET-scale systematic's files (the simulation with met scaled by ±5%), made on demand.
MET_VARIATIONS := sample_data/sim_met_up.parquet sample_data/sim_met_down.parquet
$(MET_VARIATIONS) &: sample_data/sim.parquet sample_data/generate.py
	$(PY) sample_data/generate.py --met-variations

# The sample analysis (sample_data/analysis.yaml): the network audited, the signal region
# blinded, the MET-scale and per-process normalisation systematics.
demo: install $(MET_VARIATIONS)
	$(VENV)/bin/validator run --config sample_data/analysis.yaml --db demo.duckdb

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) benchmarks/bench_run.py

clean:
	rm -rf $(VENV) demo.duckdb validation.duckdb
