"""Builds on Apache Beam (tfds_builders/beam_tiles.py) equal the plain builds.

Each Beam build runs on DirectRunner with 2 worker processes. Equal means: the same splits
and shard lengths, the same examples in the same order, the same metadata, and per-band
mean/std equal to float64 rounding (the Beam build merges per-unit moments in another
order: a few ulps, never a sample's error).
"""

import os
import pathlib

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from ee_jax.data import contract, datasets
from ee_jax.data.stats import BandStats
from ee_jax.errors import ConfigError, DataError
from tests import helpers, rasters

BANDS = helpers.SCENE_BANDS              # four 10 m bands
TWO_WORKERS = "--direct_num_workers=2 --direct_running_mode=multi_processing"
RTOL = 1e-12                              # float64 eps 2.2e-16: merges in another order move
                                          # the moments by a few ulps per merge, far below this


# --- no Beam needed ---------------------------------------------------------------------
def test_band_stats_merged_from_parts_equal_one_pass():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 10000, (5000, 3)).astype(np.uint16)
  one = BandStats(3)
  for chunk in np.array_split(pixels, 7):
    one.update(chunk)
  parts = []
  for chunk in np.array_split(pixels[::-1], 4):   # other chunks, other order
    part = BandStats(3)
    part.update(chunk)
    parts.append(BandStats.from_dict(part.as_dict()))   # through the JSON form
  merged = parts[3].merge(parts[1]).merge(BandStats(3)).merge(parts[0].merge(parts[2]))
  assert merged.count == one.count == 5000
  x = pixels.astype(np.float64)
  np.testing.assert_allclose(merged.mean, one.mean, rtol=RTOL, atol=0)
  np.testing.assert_allclose(merged.std, one.std, rtol=RTOL, atol=0)
  np.testing.assert_allclose(merged.std, x.std(axis=0), rtol=RTOL, atol=0)


def test_unknown_runner_or_stray_options_are_one_line(tmp_path):
  cfg = helpers.s2_cfg(tmp_path, [str(tmp_path / "nowhere")])
  cfg.beam_runner = "DirektRunner"
  with pytest.raises(ConfigError, match=r"^config.data.beam_runner: unknown runner "
                                        r"'DirektRunner'; known: DirectRunner, ") as err:
    datasets.prepare(cfg)
  assert "\n" not in str(err.value)
  cfg.beam_runner = ""
  cfg.beam_options = TWO_WORKERS
  with pytest.raises(ConfigError, match="beam_options is set but config.data.beam_runner"):
    datasets.prepare(cfg)
  cfg = ml_collections.ConfigDict({**cfg.to_dict(), "beam_runner": "DirectRunner",
                                   "beam_options": ["--direct_num_workers=2",
                                                    "direct_running_mode"]})
  with pytest.raises(ConfigError, match="'direct_running_mode' is not a pipeline flag"):
    datasets.prepare(cfg)


# --- Beam builds ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def beam():
  return pytest.importorskip("apache_beam", reason="apache-beam not installed "
                             "(make test-beam runs these in .venv-beam)")


def _both(cfg):
  """The plain build and the Beam build (2 DirectRunner worker processes) of `cfg`."""
  plain = datasets.prepare(cfg)
  cfg = ml_collections.ConfigDict(cfg.to_dict())
  cfg.config_name += "_beam"
  cfg.beam_runner = "DirectRunner"
  cfg.beam_options = TWO_WORKERS
  return plain, datasets.prepare(cfg)


def _assert_same(plain, beam_build):
  p, b = plain.info, beam_build.info
  assert sorted(p.splits) == sorted(b.splits)
  for name in p.splits:
    assert p.splits[name].shard_lengths == b.splits[name].shard_lengths, name
    ps, bs = plain.as_data_source(name), beam_build.as_data_source(name)
    for i in range(len(ps)):
      x, y = ps[i], bs[i]
      assert sorted(x) == sorted(y)
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}[{i}].{key}")
  pm, bm_ = dict(p.metadata), dict(b.metadata)
  assert sorted(pm) == sorted(bm_)
  for key in (contract.META_MEAN, contract.META_STD):
    np.testing.assert_allclose(bm_.pop(key), pm.pop(key), rtol=RTOL, atol=0)
  assert bm_ == pm
  # Nothing of the Beam build's bookkeeping is left beside the shards.
  files = os.listdir(beam_build.data_dir)
  assert "beam_results.json" not in files and not [f for f in files if "incomplete" in f]


def _products(tmp_path, n=3, size=96):
  out = []
  for i in range(n):
    image = helpers.field_scene(size, size, seed=i)
    image[: 4 * i] = 0                                # nodata rows: valid masks differ
    out.append(helpers.write_product(str(tmp_path / f"prod{i}"), image,
                                     origin=(500000.0 + 5000 * i, 4600000.0)))
  return out


def test_s2_products_beam_equals_plain(beam, tmp_path):
  cfg = helpers.s2_cfg(tmp_path, _products(tmp_path), bands=BANDS, max_invalid=0.2)
  plain, beam_build = _both(cfg)
  assert plain.info.splits["train"].num_examples > 10
  assert plain.info.metadata["stats_pixels"] > 0
  _assert_same(plain, beam_build)


def test_landcover_beam_equals_plain_with_class_counts(beam, tmp_path):
  scenes = []
  for i, prod in enumerate(_products(tmp_path, n=2, size=64)):
    raw = np.random.default_rng(10 + i).integers(0, 4, (64, 64)).astype(np.uint8)
    label = rasters.write_raster(tmp_path / f"label{i}.tif", raw, 10, nodata=0,
                                 origin=(500000.0 + 5000 * i, 4600000.0))
    scenes.append(dict(images=[prod], label=str(label)))
  cfg = helpers.data_cfg(tmp_path, name="landcover_tiles", scenes=scenes, bands=BANDS,
                         classes=[["a", 1], ["b", 2], ["c", 3]], tile_size=32, stride=32,
                         block_tiles=1, max_invalid=0.5)
  plain, beam_build = _both(cfg)
  assert sum(plain.info.metadata["class_pixel_counts"]["train"]) > 0
  _assert_same(plain, beam_build)


def _geotiff_bytes(array, origin):
  with MemoryFile() as mem:
    with mem.open(driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                  dtype=array.dtype, crs="EPSG:32633",
                  transform=from_origin(origin[0], origin[1], 10, 10)) as ds:
      ds.write(array, 1)
    return mem.read()


def _majortom_shard(path, seeds):
  """Major TOM Core rows (one per row group, as published), random 10 m bands."""
  rows = []
  for seed in seeds:
    rng = np.random.default_rng(seed)
    origin = (500000.0 + 1000 * seed, 4600000.0)
    row = dict(product_id=f"S2A_MSIL2A_2021070{seed % 9 + 1}T100000_N0400_R1_T33TUG_X",
               grid_cell=f"{seed}U_1R", product_datetime=f"2021070{seed % 9 + 1}T100000")
    for band in BANDS:
      row[band] = _geotiff_bytes(rng.integers(1000, 6000, (64, 64)).astype(np.uint16), origin)
    rows.append(row)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(pa.table({c: [r[c] for r in rows] for c in rows[0]}), path, row_group_size=1)


def _ssl4eo_root(root):
  """<root>/s2c/<location>/<date>/B2.tif ...; the second location has one date only."""
  dates = {"0000001": ["20200604T054639_20200604T054831_T43RCP",
                       "20200813T054639_20200813T054952_T43RCP"],
           "0000007": ["20210301T101021_20210301T101500_T32TQM"]}
  for n, (loc, names) in enumerate(dates.items()):
    for t, date in enumerate(names):
      rng = np.random.default_rng(10 * n + t)
      for band in BANDS:
        folder = root / "s2c" / loc / date
        os.makedirs(folder, exist_ok=True)
        rasters.write_raster(folder / f"{band[0]}{band[1:].lstrip('0')}.tif",
                             rng.integers(1, 5000, (64, 64)).astype(np.uint16), 10,
                             origin=(500000.0 + 10000 * n, 4600000.0))
  return root


def _archive_cfg(tmp_path, name, archive, **kw):
  return helpers.data_cfg(tmp_path, config_name=name, source="manual", archive=archive,
                          bands=BANDS, tile_size=32, stride=32, block_tiles=1, **kw)


def test_majortom_parquet_beam_equals_plain(beam, tmp_path):
  root = tmp_path / "Core-S2L2A" / "images"
  _majortom_shard(str(root / "part_00001.parquet"), [1, 2, 3])
  _majortom_shard(str(root / "part_00002.parquet"), [4, 5])
  plain, beam_build = _both(_archive_cfg(tmp_path, "mt", {"layout": "majortom_parquet",
                                                          "root": str(root.parent)}))
  assert plain.info.metadata["archive"]["products"] == 5
  _assert_same(plain, beam_build)


def test_ssl4eo_series_beam_equals_plain(beam, tmp_path):
  root = _ssl4eo_root(tmp_path / "SSL4EO-S12")
  plain, beam_build = _both(_archive_cfg(tmp_path, "ssl", {"layout": "ssl4eo",
                                                           "root": str(root)},
                                         time_series=True))
  assert plain.info.metadata[contract.META_NUM_DATES] == 2    # the shorter series padded
  _assert_same(plain, beam_build)


@pytest.mark.slow
def test_real_ssl4eo_sample_beam_equals_plain(beam, shared_data, tmp_path):
  root = shared_data / "rico_hdl" / "SSL4EO-S12"
  cfg = _archive_cfg(tmp_path, "real_ssl", {"layout": "ssl4eo", "root": str(root),
                                            "levels": ["s2c"]})
  cfg.builder.bands = ["B02", "B03", "B04", "B08", "B11"]
  plain, beam_build = _both(cfg)
  assert plain.info.metadata["archive"]["products"] == 2
  _assert_same(plain, beam_build)


def _benchmark_cfg(tmp_path, name, **builder):
  from tests import test_benchmark_builders as tb  # pylint: disable=import-outside-toplevel
  writers = {"pastis": tb.write_pastis, "mtlcc": tb.write_mtlcc,
             "sustainbench_crops": lambda root: tb.write_crops(root, builder["country"])}
  writers[name](tmp_path / "src")
  return tb.data_cfg(tmp_path, name, manual_dir=str(tmp_path / "src"), **builder)


@pytest.mark.parametrize("name,builder", [
    ("pastis", {"tile_size": 8}),                 # a unit is a patch, cut into 4 tiles
    ("sustainbench_crops", {"country": "ghana"}), # a unit is a sample
    ("mtlcc", {}),                                # a unit is a tile of one year
])
def test_benchmark_beam_equals_plain(beam, tmp_path, name, builder):
  plain, beam_build = _both(_benchmark_cfg(tmp_path, name, **builder))
  for split in ("train", "validation", "test"):
    assert plain.info.splits[split].num_examples > 0, split
  assert sum(plain.info.metadata["class_pixel_counts"]["train"]) > 0
  _assert_same(plain, beam_build)


def test_corrupt_benchmark_file_is_named_and_nothing_is_left(beam, tmp_path):
  cfg = _benchmark_cfg(tmp_path, "pastis")
  bad = tmp_path / "src" / "DATA_S2" / "S2_10002.npy"
  bad.write_bytes(bad.read_bytes()[:100])       # the header survives, the values do not
  cfg.beam_runner = "DirectRunner"
  cfg.beam_options = TWO_WORKERS
  with pytest.raises(DataError, match=str(bad)) as err:
    datasets.prepare(cfg)
  assert "\n" not in str(err.value) and not datasets.is_prepared(cfg)
  assert os.listdir(tmp_path / "tfds" / "pastis" / "t") == []


def test_tiles_lost_by_a_runner_fail_the_build(beam, tmp_path):
  """A runner that writes fewer (or more) tiles than its workers read fails the build."""
  import json, types  # pylint: disable=import-outside-toplevel,multiple-imports
  from etils import epath  # pylint: disable=import-outside-toplevel
  from tfds_builders import beam_tiles  # pylint: disable=import-outside-toplevel
  part = beam_tiles.Partial(2, 0, ["train"])
  part.tiles["train"] = 5
  (tmp_path / beam_tiles.RESULTS).write_text(json.dumps(part.as_dict()))
  builder = types.SimpleNamespace(
      name="s2_tiles", data_path=epath.Path(tmp_path),
      info=types.SimpleNamespace(splits={"train": types.SimpleNamespace(num_examples=4)}))
  with pytest.raises(DataError, match="wrote 4 tiles of the train split but the workers "
                                      "read 5; nothing was kept"):
    beam_tiles.record_results(builder)


def test_runner_data_plane_keeps_a_write_made_during_a_periodic_flush(beam):
  """Beam's runner-side data stream (flushed every DATA_BUFFER_TIME_LIMIT_MS by a thread)
  discarded bytes written while a flush was handing its bytes on (between get() and
  _clear()); guarded, such a write waits for the flush and is sent after it."""
  import threading  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.worker import data_plane  # pylint: disable=import-outside-toplevel
  from tfds_builders import beam_tiles  # pylint: disable=import-outside-toplevel
  assert beam_tiles.guard_runner_data_plane()
  sent, flushing, release = [], threading.Event(), threading.Event()

  def flush_callback(data):   # like a put() that blocks while the send queue is full
    sent.append(data)
    if data and not flushing.is_set():
      flushing.set()
      release.wait(10)

  out = data_plane.TimeBasedBufferingClosableOutputStream(
      sent.append, flush_callback=flush_callback, time_flush_threshold_ms=10)
  out.write(b"A" * 8)
  assert flushing.wait(10)
  writer = threading.Thread(target=out.write, args=(b"B" * 8,))
  writer.start()
  writer.join(0.3)
  assert writer.is_alive()   # the write waits for the flush in progress
  release.set()
  writer.join(10)
  out.close()
  assert b"".join(sent) == b"A" * 8 + b"B" * 8


class _ManyTiles:
  """A stand-in builder for read_units: 2 units of 1200 100-kB 'tiles' (240 MB, enough
  for the runner's data plane to send a stage's input in many chunks)."""
  STATS_SPLITS, LABELLED = (), False
  PER_UNIT, SIZE = 1200, 100_000

  def __init__(self, path):
    self.params, self.data_path = {}, path

  def _split_names(self):
    return ["train"]

  def _tile_layout(self):
    return {"bands": ["B1"]}

  def _beam_units(self):
    return [0, 1]

  def _beam_context(self):
    return {}

  @classmethod
  def _describe_unit(cls, unit):
    return f"unit {unit}"

  @classmethod
  def _unit_tiles(cls, params, context, unit, splits, summary):
    for j in range(cls.PER_UNIT):
      yield "train", unit * cls.PER_UNIT + j, {"image": bytes([j % 251]) * cls.SIZE}


def test_runner_delivers_every_tile_of_a_large_stage_input(beam, tmp_path, monkeypatch):
  """Issue #32: DirectRunner builds lost train tiles between the workers' read and TFDS's
  shard assignment (a stage whose input the runner sends back to the workers: it has side
  inputs). With the runner's flush interval at 1 ms instead of 1 s the race is frequent
  (unguarded: 930-1470 of 2400 arrived in 5 of 5 runs); read_units guards it."""
  import json  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.fn_api_runner import worker_handlers  # pylint: disable=import-outside-toplevel
  from apache_beam.testing.util import assert_that, equal_to  # pylint: disable=import-outside-toplevel
  from etils import epath  # pylint: disable=import-outside-toplevel
  from tfds_builders import beam_tiles  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)
  n = 2 * _ManyTiles.PER_UNIT
  options = PipelineOptions(["--runner=DirectRunner", *TWO_WORKERS.split()])
  with beam.Pipeline(options=options) as p:
    tiles = beam_tiles.read_units(_ManyTiles(epath.Path(tmp_path)), p)["train"]
    count = tiles | "N" >> beam.combiners.Count.Globally()
    arrived = (tiles
               | "WithSideInput" >> beam.Map(lambda kv, n: kv[0],
                                             n=beam.pvalue.AsSingleton(count))
               | "Count" >> beam.combiners.Count.Globally())
    assert_that(arrived, equal_to([n]))
  read = json.loads((tmp_path / beam_tiles.RESULTS).read_text())
  assert read["tiles"] == {"train": n}


def test_an_empty_split_is_the_plain_builds_error(beam, tmp_path):
  cfg = helpers.s2_cfg(tmp_path, _products(tmp_path, n=1, size=64), bands=BANDS,
                       split_fractions={"train": 1.0, "validation": 0.0})
  cfg.beam_runner = "DirectRunner"
  with pytest.raises(DataError, match=r"^s2_tiles: no valid tiles in the validation split "
                                      r"\(products prod0\)") as err:
    datasets.prepare(cfg)
  assert "\n" not in str(err.value) and not datasets.is_prepared(cfg)


def test_a_builder_without_work_units_says_so(beam, tmp_path):
  cfg = helpers.data_cfg(tmp_path, name="synthetic_landcover", config_name="syn")
  cfg.beam_runner = "DirectRunner"
  with pytest.raises(ConfigError, match="synthetic_landcover does not build on Beam yet"):
    datasets.prepare(cfg)
  assert not datasets.is_prepared(cfg)


def test_corrupt_product_is_named_and_nothing_is_left(beam, tmp_path):
  products = _products(tmp_path, n=3, size=256)
  bad = pathlib.Path(products[1]) / "B04.tif"
  data = bad.read_bytes()
  bad.write_bytes(data[: len(data) // 3])     # the header opens, the pixels are cut off
  cfg = helpers.s2_cfg(tmp_path, products, bands=BANDS, config_name="corrupt")
  cfg.beam_runner = "DirectRunner"
  cfg.beam_options = TWO_WORKERS
  with pytest.raises(DataError, match=str(bad)) as err:
    datasets.prepare(cfg)
  assert "\n" not in str(err.value)
  assert not datasets.is_prepared(cfg)
  assert os.listdir(tmp_path / "tfds" / "s2_tiles" / "corrupt") == []
