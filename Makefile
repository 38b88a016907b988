# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= $(CURDIR)/.data/tfds
WORKDIR ?= $(CURDIR)/workdirs/demo

.PHONY: venv demo test test-slow test-all bench clean

venv: $(STAMP)

# (Re)create the environment whenever the packaging metadata changes.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# 1. the embedded real Sentinel-2 scene: build the tiles, pre-train a small model on them;
# 2. synthetic land cover: pre-train on unlabelled tiles, then a reduced label-fraction
#    study (pretrained vs random init; 2 fractions, 1 seed) ending with its report table.
demo: $(STAMP)
	$(PY) launch.py --mode=build --config=configs/pretrain_s2.py:demo --config.data.data_dir=$(DATA_DIR)
	$(PY) launch.py --mode=pretrain --config=configs/pretrain_s2.py:demo \
	  --config.data.data_dir=$(DATA_DIR) --workdir=$(WORKDIR)/pretrain_s2
	$(PY) launch.py --mode=study --config=configs/study_synthetic.py:demo \
	  --config.data.data_dir=$(DATA_DIR) --workdir=$(WORKDIR)/study_synthetic

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/build_scene.py

clean:
	rm -rf $(VENV) .data workdirs *.egg-info
