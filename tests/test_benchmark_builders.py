"""Builders of the paper's benchmarks on small fixtures written here in each dataset's layout:
tile counts, dtypes, one pixel's values and dates, label mapping, folds, and the errors of an
incomplete download or a corrupt file."""

import json
import os

import ml_collections
import numpy as np
import pytest

from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError


def data_cfg(tmp_path, name, config_name="t", **builder):
  return ml_collections.ConfigDict(dict(
      name=name, config_name=config_name, data_dir=str(tmp_path / "tfds"),
      builder=ml_collections.ConfigDict(builder)))


def examples(builder, split):
  ds = builder.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


# --- PASTIS ---------------------------------------------------------------------------------
# id -> (fold, stored dates (not in time order for 10002), top-left corner of the geometry)
PASTIS_PATCHES = {
    10001: (1, [20180924, 20181004, 20181019], (600000.0, 6800160.0)),
    10002: (1, [20181101, 20180920, 20190305, 20181230, 20190110], (600160.0, 6800160.0)),
    20001: (4, [20180915, 20181010, 20181120, 20190420], (610000.0, 6810000.0)),
    30001: (5, [20180930, 20190601], (620000.0, 6820000.0)),
}
PASTIS_SIZE = 16


def pastis_value(pid, t, band, y, x):
  """The stored DN of patch `pid`, stored date index t, band, pixel (y, x)."""
  return (pid % 97) * 300 + t * 40 + band * 3 + y + 2 * x


def pastis_target(pid):
  y, x = np.mgrid[:PASTIS_SIZE, :PASTIS_SIZE]
  return ((y * PASTIS_SIZE + x + pid) % 20).astype(np.uint8)  # 0..19 (19 = void)


def write_pastis(root):
  os.makedirs(root / "DATA_S2")
  os.makedirs(root / "ANNOTATIONS")
  features = []
  for i, (pid, (fold, dates, (x0, y1))) in enumerate(PASTIS_PATCHES.items()):
    t, b, y, x = np.meshgrid(np.arange(len(dates)), np.arange(10), np.arange(PASTIS_SIZE),
                             np.arange(PASTIS_SIZE), indexing="ij")
    np.save(root / "DATA_S2" / f"S2_{pid}.npy", pastis_value(pid, t, b, y, x).astype(np.int16))
    target = np.stack([pastis_target(pid), np.zeros_like(pastis_target(pid)),
                       np.ones_like(pastis_target(pid))])
    np.save(root / "ANNOTATIONS" / f"TARGET_{pid}.npy", target)
    d = {str(k): v for k, v in enumerate(dates)}
    side = PASTIS_SIZE * 10.0
    features.append({"type": "Feature", "properties": {
        "ID_PATCH": pid, "Fold": fold, "TILE": "t31tfm",
        "dates-S2": json.dumps(d) if i % 2 else d},  # both forms occur
        "geometry": {"type": "Polygon", "coordinates": [[
            [x0, y1], [x0 + side, y1], [x0 + side, y1 - side], [x0, y1 - side], [x0, y1]]]}})
  with open(root / "metadata.geojson", "w") as f:
    json.dump({"type": "FeatureCollection", "features": features}, f)
  norm = {f"Fold_{k}": {"mean": [float(k)] * 10, "std": [1.0] * 10} for k in range(1, 6)}
  with open(root / "NORM_S2_patch.json", "w") as f:
    json.dump(norm, f)
  return root


@pytest.fixture(scope="module")
def pastis_root(tmp_path_factory):
  return write_pastis(tmp_path_factory.mktemp("pastis"))


def test_pastis_fold1_tiles_dates_values_labels_georeference(pastis_root, tmp_path):
  builder = datasets.prepare(data_cfg(tmp_path, "pastis", manual_dir=str(pastis_root),
                                      fold=1, tile_size=8))
  counts = {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")}
  assert counts == {"train": 8, "validation": 4, "test": 4}  # (16/8)^2 tiles per patch
  train = examples(builder, "train")
  assert {contract.as_text(e[contract.SCENE_ID]) for e in train} == {"pastis_10001",
                                                                     "pastis_10002"}
  tiles = {(contract.as_text(e[contract.SCENE_ID]), int(e[contract.ROW]),
            int(e[contract.COL])): e for e in train}
  e = tiles[("pastis_10002", 8, 0)]
  assert e[contract.IMAGE].shape == (5, 8, 8, 10) and e[contract.IMAGE].dtype == np.uint16
  assert e[contract.VALID].dtype == np.bool_ and e[contract.LABEL].dtype == np.uint8
  # Dates sorted; the image follows them: sorted step 0 is stored step 1 (20180920).
  np.testing.assert_array_equal(e[contract.DATES],
                                [20180920, 20181101, 20181230, 20190110, 20190305])
  for t_sorted, t_stored in enumerate([1, 0, 3, 4, 2]):
    assert e[contract.IMAGE][t_sorted, 2, 3, 7] == pastis_value(10002, t_stored, 7, 8 + 2, 3)
  assert e[contract.VALID].all()
  # The shorter series is padded at the end: valid False, DN 0, date 0.
  p = tiles[("pastis_10001", 0, 8)]
  np.testing.assert_array_equal(p[contract.DATES], [20180924, 20181004, 20181019, 0, 0])
  assert p[contract.VALID][:3].all() and not p[contract.VALID][3:].any()
  assert (p[contract.IMAGE][3:] == 0).all()
  # Labels: 0..18 kept, void (19) -> 255.
  raw = pastis_target(10001)[0:8, 8:16]
  expected = np.where(raw == 19, 255, raw)
  np.testing.assert_array_equal(p[contract.LABEL], expected)
  assert (raw == 19).any() and (raw == 18).any()
  # Georeference from the geometry: top-left (min x, max y) moved by the tile offset.
  np.testing.assert_allclose(p[contract.TRANSFORM], [600080.0, 10, 0, 6800160.0, 0, -10])
  assert contract.as_text(p[contract.CRS]) == "EPSG:2154"
  meta = builder.info.metadata
  assert meta[contract.META_NUM_DATES] == 5 and meta[contract.META_BANDS][7] == "B8A"
  assert len(meta[contract.META_CLASS_NAMES]) == 19
  assert meta["dataset_norm"]["Fold_3"]["mean"] == [3.0] * 10
  # Our statistics: over the valid pixels of the train split only.
  vals = np.concatenate([pastis_value(pid, np.arange(len(PASTIS_PATCHES[pid][1]))[:, None, None],
                                      0, *np.mgrid[:16, :16][:, None]).ravel()
                         for pid in (10001, 10002)])
  np.testing.assert_allclose(meta[contract.META_MEAN][0], vals.mean(), rtol=1e-9)


def test_pastis_fold_table_decides_membership(pastis_root, tmp_path):
  builder = datasets.prepare(data_cfg(tmp_path, "pastis", config_name="fold2",
                                      manual_dir=str(pastis_root), fold=2))
  ids = {s: sorted(contract.as_text(e[contract.SCENE_ID]) for e in examples(builder, s))
         for s in ("train", "validation", "test")}
  # Fold 2: train folds 2, 3, 4; validation 5; test 1.
  assert ids == {"train": ["pastis_20001"], "validation": ["pastis_30001"],
                 "test": ["pastis_10001", "pastis_10002"]}
  assert examples(builder, "test")[0][contract.IMAGE].shape == (5, 16, 16, 10)


def test_pastis_incomplete_download_names_the_missing_file(pastis_root, tmp_path):
  root = write_pastis(tmp_path / "copy")
  os.remove(root / "ANNOTATIONS" / "TARGET_20001.npy")
  with pytest.raises(DataError, match=r"missing file .*ANNOTATIONS/TARGET_20001\.npy"):
    datasets.prepare(data_cfg(tmp_path, "pastis", manual_dir=str(root)))
  assert not datasets.is_prepared(data_cfg(tmp_path, "pastis", manual_dir=str(root)))
  with pytest.raises(ConfigError, match="manual_dir"):
    datasets.prepare(data_cfg(tmp_path, "pastis", config_name="none"))
  with pytest.raises(ConfigError, match="fold"):
    datasets.prepare(data_cfg(tmp_path, "pastis", manual_dir=str(root), fold=6))


# --- Ghana / South Sudan (SustainBench layout) -----------------------------------------------
# id -> (partition, dates as stored)
CROP_SAMPLES = {7: (0, ["2017-03-01", "2017-01-15", "2017-02-02"]),
                12: (0, ["2017-01-10", "2017-04-20"]),
                31: (1, ["2017-05-05", "2017-06-06"]),
                44: (2, ["2017-02-14", "2017-03-14", "2017-04-14"])}


def crop_value(sid, band, y, x, t):
  return sid * 100 + band * 7 + t * 1000 + (y + x) % 5


def write_crops(root, country):
  d = root / country
  for sub in ("npy", "truth", "s2"):
    os.makedirs(d / sub, exist_ok=True)
  with open(d / "list_eval_partition.csv", "w") as f:
    f.write("id,partition\n" + "".join(f"{sid},{p}\n" for sid, (p, _) in CROP_SAMPLES.items()))
  for sid, (_, dates) in CROP_SAMPLES.items():
    b, y, x, t = np.meshgrid(np.arange(10), np.arange(64), np.arange(64),
                             np.arange(len(dates)), indexing="ij")
    s2 = crop_value(sid, b, y, x, t).astype(np.int16)
    s2[:, 0, 0, 0] = -1  # one unobserved pixel on the first stored date
    np.savez(d / "npy" / f"{country}_{sid:06d}.npz", s2=s2, s1=np.zeros((2, 64, 64, 1)),
             planet=np.zeros((4, 64, 64, 1)))
    truth = (np.arange(64 * 64).reshape(64, 64) + sid) % 7  # 0..6: 0 and 5, 6 ignored
    np.savez(d / "truth" / f"{country}_{sid:06d}.npz", truth=truth)
    with open(d / "s2" / f"s2_{country}_{sid:06d}.json", "w") as f:
      json.dump({"dates": dates}, f)
  return root


@pytest.mark.parametrize("country", ["ghana", "southsudan"])
def test_sustainbench_partitions_dates_and_labels(tmp_path, country):
  root = write_crops(tmp_path / "src", country)
  builder = datasets.prepare(data_cfg(tmp_path, "sustainbench_crops", config_name=country,
                                      manual_dir=str(root), country=country))
  split_ids = {s: sorted(contract.as_text(e[contract.SCENE_ID]) for e in examples(builder, s))
               for s in ("train", "validation", "test")}
  assert split_ids == {"train": [f"{country}_000007", f"{country}_000012"],
                       "validation": [f"{country}_000031"], "test": [f"{country}_000044"]}
  e = {contract.as_text(x[contract.SCENE_ID]): x for x in examples(builder, "train")}[
      f"{country}_000007"]
  assert e[contract.IMAGE].shape == (3, 64, 64, 10) and e[contract.IMAGE].dtype == np.uint16
  np.testing.assert_array_equal(e[contract.DATES], [20170115, 20170202, 20170301])
  for t_sorted, t_stored in enumerate([1, 2, 0]):
    assert e[contract.IMAGE][t_sorted, 5, 9, 4] == crop_value(7, 4, 5, 9, t_stored)
  assert not e[contract.VALID][2, 0, 0] and e[contract.IMAGE][2, 0, 0, 0] == 0  # stored t=0
  assert e[contract.VALID][:2, 0, 0].all() and e[contract.VALID][2, 0, 1]
  short = {contract.as_text(x[contract.SCENE_ID]): x for x in examples(builder, "train")}[
      f"{country}_000012"]
  np.testing.assert_array_equal(short[contract.DATES], [20170110, 20170420, 0])
  assert not short[contract.VALID][2].any()
  truth = (np.arange(64 * 64).reshape(64, 64) + 7) % 7
  np.testing.assert_array_equal(e[contract.LABEL], np.where((truth >= 1) & (truth <= 4),
                                                            truth - 1, 255))
  meta = builder.info.metadata
  assert meta[contract.META_CLASS_NAMES] == (["groundnut", "maize", "rice", "soya_bean"]
                                             if country == "ghana" else
                                             ["sorghum", "maize", "rice", "groundnut"])
  assert meta["class_pixel_counts"]["validation"] == [
      int(((np.arange(4096) + 31) % 7 == k).sum()) for k in (1, 2, 3, 4)]


def test_sustainbench_missing_file_and_bad_country(tmp_path):
  root = write_crops(tmp_path / "src", "ghana")
  os.remove(root / "ghana" / "s2" / "s2_ghana_000031.json")
  with pytest.raises(DataError, match=r"missing file .*s2_ghana_000031\.json"):
    datasets.prepare(data_cfg(tmp_path, "sustainbench_crops", manual_dir=str(root)))
  with pytest.raises(ConfigError, match="country"):
    datasets.prepare(data_cfg(tmp_path, "sustainbench_crops", manual_dir=str(root),
                              country="kenya"))


# --- T31TFM (DeepSatData pickles) -------------------------------------------------------------
T31_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
             "B11", "B12"]
T31_FACTOR = {"B01": 6, "B09": 6, "B10": 6, "B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B11": 2,
              "B12": 2}  # native pixel size / 10 m


def t31_sample(seed, doy, year=2017):
  size = 12
  rng = np.random.default_rng(seed)
  sample = {"doy": np.array(doy), "year": year, "ids": np.zeros((size, size), np.int64),
            "labels": rng.integers(0, 5, (size, size)).astype(np.int64)}
  for b in T31_BANDS:
    f = T31_FACTOR.get(b, 1)
    sample[b] = rng.integers(1, 10000, (len(doy), size // f, size // f)).astype(np.uint16)
  return sample


def write_t31(root, samples):
  import pickle
  os.makedirs(root / "paths")
  os.makedirs(root / "data")
  for split, names in (("train", ["a", "b"]), ("eval", ["c"]), ("test", ["d"])):
    with open(root / "paths" / f"{split}_paths.csv", "w") as f:
      f.write("".join(f"data/{n}.pickle\n" for n in names))
  for name, sample in samples.items():
    with open(root / "data" / f"{name}.pickle", "wb") as f:
      pickle.dump(sample, f, protocol=4)
  with open(root / "classes.txt", "w") as f:
    f.write("1|wheat\n2|maize\n4|meadow\n")  # raw 0 and 3 not listed -> 255
  return root


T31_SAMPLES = {"a": t31_sample(0, [120, 30, 0, 0]), "b": t31_sample(1, [10, 200, 300]),
               "c": t31_sample(2, [5, 0]), "d": t31_sample(3, [60])}


def test_t31tfm_resampled_to_10m_doy0_dropped_classes_mapped(tmp_path):
  root = write_t31(tmp_path / "src", T31_SAMPLES)
  builder = datasets.prepare(data_cfg(tmp_path, "t31tfm", manual_dir=str(root)))
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "train": 2, "validation": 1, "test": 1}
  e = {contract.as_text(x[contract.SCENE_ID]): x for x in examples(builder, "train")}["a"]
  assert e[contract.IMAGE].shape == (3, 12, 12, 13)  # T = longest series after dropping doy 0
  # doy 0 dropped, sorted: day 30 then day 120 of 2017, then padding.
  np.testing.assert_array_equal(e[contract.DATES], [20170130, 20170430, 0])
  assert e[contract.VALID][:2].all() and not e[contract.VALID][2].any()
  s = T31_SAMPLES["a"]
  # Pixel (7, 11) on the 10 m grid: 20 m pixel (3, 5), 60 m pixel (1, 1).
  for band, (yy, xx) in (("B02", (7, 11)), ("B11", (3, 5)), ("B01", (1, 1))):
    i = T31_BANDS.index(band)
    assert e[contract.IMAGE][0, 7, 11, i] == s[band][1, yy, xx]  # stored step 1 = day 30
    assert e[contract.IMAGE][1, 7, 11, i] == s[band][0, yy, xx]
  lut = {0: 255, 1: 0, 2: 1, 3: 255, 4: 2}
  np.testing.assert_array_equal(e[contract.LABEL], np.vectorize(lut.get)(s["labels"]))
  assert builder.info.metadata[contract.META_CLASS_NAMES] == ["wheat", "maize", "meadow"]


def test_t31tfm_refuses_a_pickle_that_runs_code(tmp_path):
  import pickle

  from tfds_builders.t31tfm import load_arrays

  marker = tmp_path / "ran"

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  samples = dict(T31_SAMPLES)
  root = write_t31(tmp_path / "src", samples)
  bad = root / "data" / "c.pickle"
  with open(bad, "wb") as f:
    pickle.dump({"doy": np.array([1]), "x": Payload()}, f)
  with pytest.raises(DataError, match=r"c\.pickle: refused to load global '(posix|os)\.system'"):
    load_arrays(str(bad))
  with pytest.raises(DataError, match=r"c\.pickle: refused to load global"):
    datasets.prepare(data_cfg(tmp_path, "t31tfm", manual_dir=str(root)))
  assert not marker.exists()
  # Plain arrays, scalars and lists load (protocols 2 and 5 use other numpy globals).
  for protocol in (2, 5):
    with open(bad, "wb") as f:
      pickle.dump({"a": np.arange(3.0), "s": np.int64(4), "l": [1, "x"]}, f, protocol=protocol)
    got = load_arrays(str(bad))
    np.testing.assert_array_equal(got["a"], [0.0, 1.0, 2.0])
    assert got["s"] == 4 and got["l"] == [1, "x"]


def test_t31tfm_missing_pickle_named(tmp_path):
  root = write_t31(tmp_path / "src", T31_SAMPLES)
  os.remove(root / "data" / "d.pickle")
  with pytest.raises(DataError, match=r"missing file .*data/d\.pickle"):
    datasets.prepare(data_cfg(tmp_path, "t31tfm", manual_dir=str(root), num_dates=3))


# --- MTLCC (gzip TFRecords) -------------------------------------------------------------------
def _varint(v):
  v &= (1 << 64) - 1
  out = bytearray()
  while True:
    b = v & 0x7F
    v >>= 7
    out.append(b | (0x80 if v else 0))
    if not v:
      return bytes(out)


def _field(number, payload):  # length-delimited
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_example(features, packed=True):
  """A tf.train.Example in wire format; values: list of bytes, float list or int list."""
  import struct
  entries = b""
  for key, value in features.items():
    if value and isinstance(value[0], bytes):
      feat = _field(1, b"".join(_field(1, v) for v in value))
    elif value and isinstance(value[0], float):
      feat = _field(2, _field(1, struct.pack(f"<{len(value)}f", *value)))
    elif packed:
      feat = _field(3, _field(1, b"".join(_varint(v) for v in value)))
    else:  # unpacked: one varint field per value
      feat = _field(3, b"".join(_varint(1 << 3 | 0) + _varint(v) for v in value))
    entries += _field(1, _field(1, key.encode()) + _field(2, feat))
  return _field(1, entries)


def tfrecord(record, corrupt=False):
  import struct

  from tfds_builders.mtlcc import masked_crc32c
  head = struct.pack("<Q", len(record))
  crc = masked_crc32c(record) ^ (1 if corrupt else 0)
  return head + struct.pack("<I", masked_crc32c(head)) + record + struct.pack("<I", crc)


MTLCC_DOY = {16: [200, 0, 15, 100, 0], 17: [30, 60, 0, 0, 0]}  # 0 = padding


def mtlcc_arrays(tileid, year, px=24):
  rng = np.random.default_rng(int(tileid) * 100 + year)
  t = len(MTLCC_DOY[year])
  return {"x10": rng.integers(0, 9000, (t, px, px, 4)),
          "x20": rng.integers(0, 9000, (t, px // 2, px // 2, 6)),
          "x60": rng.integers(0, 9000, (t, px // 6, px // 6, 3)),
          "labels": np.broadcast_to(rng.integers(0, 4, (px, px)), (t, px, px))}


def write_mtlcc(root, packed=True, size=240):
  """The MTLCC layout under `root` (`size`: 240 or 480 m tiles; benchmarks/mtlcc_build.py
  uses 480 for a bigger fixture)."""
  import gzip
  base = root / "data_IJGI18" / "datasets" / "full" / str(size)
  os.makedirs(base / "tileids")
  splits = {"train_fold0": ["101", "102"], "test_fold0": ["201"], "eval": ["301"]}
  for name, ids in splits.items():
    with open(base / "tileids" / f"{name}.tileids", "w") as f:
      f.write("\n".join(ids) + "\n")
  with open(base / "classes.txt", "w") as f:
    f.write("0|unknown\n1|sugar beet\n2|oat\n3|meadow\n")
  with open(base / "geotransforms.csv", "w") as f:
    for tid in (t for ids in splits.values() for t in ids):
      f.write(f"{tid},{600000 + int(tid) * 240},10,0,{5400000 - int(tid) * 240},0,-10,32632\n")
  for year in (16, 17):
    os.makedirs(base / f"data{year}")
    for tid in (t for ids in splits.values() for t in ids):
      a = mtlcc_arrays(tid, year, size // 10)
      feats = {}
      for key in ("x10", "x20", "x60", "labels"):
        arr = np.ascontiguousarray(a[key]).astype("<i8")
        feats[f"{key}/data"] = [arr.tobytes()]
        feats[f"{key}/shape"] = list(arr.shape)
      feats["dates/doy"] = [np.array(MTLCC_DOY[year], "<i8").tobytes()]
      feats["dates/shape"] = [len(MTLCC_DOY[year])]
      feats["dates/year"] = [np.full(5, 2999, "<i8").tobytes()]  # unreliable: not used
      with gzip.open(base / f"data{year}" / f"{tid}.tfrecord.gz", "wb") as f:
        f.write(tfrecord(encode_example(feats, packed)))
  return base


# CRC-32C check values: b"123456789" (the standard check), RFC 3720 B.4 and b"a".
CRC32C_VECTORS = {b"": 0, b"a": 0xC1D04330, b"123456789": 0xE3069283,
                  bytes(32): 0x8A9136AA, b"\xff" * 32: 0x62A8AB43,
                  bytes(range(32)): 0x46DD794E, bytes(range(31, -1, -1)): 0x113FDB5C}


def test_crc32c_google_and_table_agree_on_known_vectors():
  from tfds_builders.mtlcc import tfrecord
  assert tfrecord.CRC32C_IMPL.startswith("google-crc32c")  # installed: setup.cfg needs it
  rng = np.random.default_rng(0)
  extra = [rng.bytes(n) for n in (1, 7, 1000, 65537)]
  for data in [*CRC32C_VECTORS, *extra]:
    assert tfrecord.crc32c(data) == tfrecord.crc32c_table(data), data[:16]
  for data, want in CRC32C_VECTORS.items():
    assert tfrecord.crc32c(data) == want and tfrecord.crc32c_table(data) == want


def test_crc32c_falls_back_to_the_table_without_google_crc32c(monkeypatch):
  import importlib
  import sys

  from tfds_builders.mtlcc import tfrecord
  try:
    monkeypatch.setitem(sys.modules, "google_crc32c", None)  # import raises ImportError
    importlib.reload(tfrecord)
    assert tfrecord.CRC32C_IMPL == "python table" and tfrecord.crc32c is tfrecord.crc32c_table
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
  finally:
    monkeypatch.undo()
    importlib.reload(tfrecord)
  assert tfrecord.CRC32C_IMPL.startswith("google-crc32c")


def test_example_decoding_of_packed_unpacked_and_empty_features():
  from tensorflow_datasets.proto import tf_example_pb2

  from tfds_builders.mtlcc import parse_example
  from tfds_builders.mtlcc.example import WireError
  for packed in (True, False):  # the test's own encoder: both int64 wire forms
    got = parse_example(encode_example({"i": [3, -2, 1 << 40], "f": [0.5, -1.25],
                                        "b": [b"ab", b""]}, packed))
    np.testing.assert_array_equal(got["i"], [3, -2, 1 << 40])
    assert got["i"].dtype == np.int64
    np.testing.assert_array_equal(got["f"], np.array([0.5, -1.25], np.float32))
    assert got["f"].dtype == np.float32 and got["b"] == [b"ab", b""]
  e = tf_example_pb2.Example()
  e.features.feature["none"].SetInParent()  # a Feature holding no list
  e.features.feature["ints"].int64_list.value.extend([])
  got = parse_example(e.SerializeToString())
  assert got["none"] == [] and got["ints"].size == 0 and got["ints"].dtype == np.int64
  with pytest.raises(WireError):
    parse_example(b"\x0a\xff")  # field 1, a length varint cut short


def test_mtlcc_tiles_bands_dates_labels_georeference(tmp_path):
  base = write_mtlcc(tmp_path / "src")
  builder = datasets.prepare(data_cfg(tmp_path, "mtlcc", manual_dir=str(tmp_path / "src")))
  assert {s: builder.info.splits[s].num_examples for s in builder.info.splits} == {
      "train": 4, "validation": 2, "test": 2}  # a tile per year
  tiles = {contract.as_text(e[contract.SCENE_ID]): e for e in examples(builder, "train")}
  e = tiles["102_2016"]
  assert e[contract.IMAGE].shape == (5, 24, 24, 13) and e[contract.IMAGE].dtype == np.uint16
  # doy 0 dropped, year from the folder, sorted: 15, 100, 200 of 2016, then padding.
  np.testing.assert_array_equal(e[contract.DATES], [20160115, 20160409, 20160718, 0, 0])
  assert e[contract.VALID][:3].all() and not e[contract.VALID][3:].any()
  a = mtlcc_arrays("102", 16)
  bands = builder.info.metadata[contract.META_BANDS]
  assert bands[:4] == ["B04", "B03", "B02", "B08"] and bands[-1] == "B10"
  y, x = 13, 19  # 20 m pixel (6, 9), 60 m pixel (2, 3)
  for t_sorted, t_stored in enumerate([2, 3, 0]):
    px = e[contract.IMAGE][t_sorted, y, x]
    np.testing.assert_array_equal(px[:4], a["x10"][t_stored, y, x])
    np.testing.assert_array_equal(px[4:10], a["x20"][t_stored, 6, 9])
    np.testing.assert_array_equal(px[10:], a["x60"][t_stored, 2, 3])
  np.testing.assert_array_equal(e[contract.LABEL], np.where(a["labels"][0] == 0, 255,
                                                            a["labels"][0] - 1))
  assert builder.info.metadata[contract.META_CLASS_NAMES] == ["sugar beet", "oat", "meadow"]
  np.testing.assert_allclose(e[contract.TRANSFORM], [600000 + 102 * 240, 10, 0,
                                                     5400000 - 102 * 240, 0, -10])
  assert contract.as_text(e[contract.CRS]) == "EPSG:32632"
  assert {contract.as_text(x[contract.SCENE_ID]) for x in examples(builder, "test")} == {
      "301_2016", "301_2017"}


def test_mtlcc_corrupt_record_and_missing_tile(tmp_path):
  import gzip
  base = write_mtlcc(tmp_path / "src", packed=False)
  path = base / "data17" / "201.tfrecord.gz"
  with gzip.open(path, "rb") as f:
    blob = bytearray(f.read())
  blob[-1] ^= 0xFF  # the data CRC
  with gzip.open(path, "wb") as f:
    f.write(bytes(blob))
  with pytest.raises(DataError, match=r"data17/201\.tfrecord\.gz: corrupt record at byte 0 "
                                      r"\(data CRC mismatch\)"):
    datasets.prepare(data_cfg(tmp_path, "mtlcc", manual_dir=str(tmp_path / "src")))
  with gzip.open(path, "wb") as f:
    f.write(tfrecord(b"\x0a\x05ab"))  # valid CRCs, an Example cut short
  with pytest.raises(DataError, match=r"data17/201\.tfrecord\.gz: not a tf\.train\.Example "
                                      r"\(.*\)$"):
    datasets.prepare(data_cfg(tmp_path, "mtlcc", manual_dir=str(tmp_path / "src")))
  os.remove(path)
  with pytest.raises(DataError, match=r"missing file .*data17/201\.tfrecord\.gz"):
    datasets.prepare(data_cfg(tmp_path, "mtlcc", manual_dir=str(tmp_path / "src")))


# --- the configs: build through the entry point with only manual_dir set; a smoke study ------
@pytest.mark.parametrize("name,writer", [
    ("study_pastis", lambda root: write_pastis(root)),
    ("study_ghana", lambda root: write_crops(root, "ghana")),
    ("study_south_sudan", lambda root: write_crops(root, "southsudan")),
    ("study_t31tfm", lambda root: write_t31(root, T31_SAMPLES)),
    ("study_mtlcc", lambda root: write_mtlcc(root)),
])
def test_benchmark_configs_build_with_only_manual_dir(tmp_path, capsys, name, writer):
  import importlib

  from ee_jax import run as run_lib
  writer(tmp_path / "src")
  c = importlib.import_module(f"configs.{name}").get_config(None)
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.builder.manual_dir = str(tmp_path / "src")
  run_lib.run("build", c, str(tmp_path / "w"))
  out = capsys.readouterr().out
  assert "split train" in out and "classes:" in out
  assert c.model.temporal == "shared" and min(c.study.fractions) == 1 / 64


@pytest.mark.slow  # about 3 minutes on 2 busy cores: pre-training plus 4 fine-tunings
def test_smoke_study_on_the_pastis_fixture(pastis_root, tmp_path):
  from configs import study_pastis
  from ee_jax.study import run_study
  c = study_pastis.get_config("smoke")
  c.data.data_dir = str(tmp_path / "tfds")
  c.data.builder.manual_dir = str(pastis_root)
  c.data.builder.tile_size = 8  # 8 train tiles: enough for a batch on 2 devices
  summary = run_study(c, str(tmp_path / "study"))
  study = json.load(open(tmp_path / "study" / "study.json"))
  assert study["complete"] and len(study["runs"]) == 4  # 2 fractions x 2 inits x 1 seed
  for run in study["runs"]:
    assert run["miou"] is None or 0.0 <= run["miou"] <= 1.0
  assert summary
