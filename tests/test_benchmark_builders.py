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
