"""The synthetic_landcover builder: contract, determinism, labels, clouds, metadata, and
that its classes are told apart by their temporal signature more than by any single date."""

import datetime

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError
from tfds_builders.synthetic_landcover import DEFAULT_PARAMS, SyntheticLandcover
from tfds_builders.synthetic_landcover.builder import S2_BANDS

# 64x64 scenes cut into 16 tiles of 16x16: 8 train scenes, 2 validation, 2 test, 1 unlabelled.
TINY = {"tile_size": 16, "scene_size": 64,
        "num_tiles": {"unlabelled": 16, "train": 128, "validation": 32, "test": 32}}
SPLITS = ("unlabelled", "train", "validation", "test")


def _cfg(data_dir, config_name="tiny", **params):
  return ml_collections.ConfigDict({
      "name": "synthetic_landcover", "config_name": config_name, "data_dir": str(data_dir),
      "builder": ml_collections.ConfigDict({**TINY, **params})})


def _read(builder, split):
  """All examples of a split as a dict of stacked arrays, sorted by (scene_id, row, col)."""
  source = builder.as_data_source(split=split)
  examples = [source[i] for i in range(len(source))]
  examples.sort(key=lambda e: (contract.as_text(e[contract.SCENE_ID]), int(e[contract.ROW]),
                               int(e[contract.COL])))
  out = {}
  for key in examples[0]:
    values = [e[key] for e in examples]
    if key in (contract.CRS, contract.SCENE_ID):
      out[key] = [contract.as_text(v) for v in values]
    else:
      out[key] = np.stack([np.asarray(v) for v in values])
  return out


def _make(**params):
  return SyntheticLandcover(params={**TINY, **params},
                            config=tfds.core.BuilderConfig(name="direct"), data_dir="/nonexistent")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  builder = datasets.prepare(_cfg(root), log=lambda *_: None)
  return root, builder, {split: _read(builder, split) for split in SPLITS}


def test_contract_shapes_and_dtypes(built):
  _, builder, data = built
  t, s, c = DEFAULT_PARAMS["num_dates"], TINY["tile_size"], len(S2_BANDS)
  assert set(builder.info.splits) == set(SPLITS)
  for split in SPLITS:
    d = data[split]
    n = TINY["num_tiles"][split]
    assert builder.info.splits[split].num_examples == n
    assert d[contract.IMAGE].shape == (n, t, s, s, c) and d[contract.IMAGE].dtype == np.uint16
    assert d[contract.VALID].shape == (n, t, s, s) and d[contract.VALID].dtype == np.bool_
    assert d[contract.DATES].shape == (n, t) and d[contract.DATES].dtype == np.int32
    assert d[contract.LABEL].shape == (n, s, s) and d[contract.LABEL].dtype == np.uint8
    assert d[contract.TRANSFORM].shape == (n, 6) and d[contract.TRANSFORM].dtype == np.float64
    assert set(d[contract.CRS]) == {"EPSG:32633"}
    assert 0 < d[contract.IMAGE].max() <= 10000
    # Dates: increasing, real calendar days of the configured year.
    assert (np.diff(d[contract.DATES], axis=1) > 0).all()
    for v in np.unique(d[contract.DATES]):
      assert datetime.datetime.strptime(str(v), "%Y%m%d").year == DEFAULT_PARAMS["year"]
    # Georeference: 10 m north-up pixels; row/col agree with the transform within a scene.
    tr = d[contract.TRANSFORM]
    np.testing.assert_array_equal(tr[:, [1, 2, 4, 5]], [[10.0, 0.0, 0.0, -10.0]] * n)
    rows, cols = d[contract.ROW], d[contract.COL]
    assert set(rows) | set(cols) <= set(range(0, TINY["scene_size"], s))
    scenes = np.array(d[contract.SCENE_ID])
    for scene in set(d[contract.SCENE_ID]):
      m = scenes == scene
      np.testing.assert_allclose(tr[m, 0] - 10.0 * cols[m], (tr[m, 0] - 10.0 * cols[m])[0])
      np.testing.assert_allclose(tr[m, 3] + 10.0 * rows[m], (tr[m, 3] + 10.0 * rows[m])[0])
      assert len(set(zip(rows[m], cols[m]))) == m.sum()  # no tile twice


def test_splits_are_spatially_disjoint(built):
  _, _, data = built
  origins = {split: {tuple(x) for x in data[split][contract.TRANSFORM][:, [0, 3]]}
             for split in SPLITS}
  scenes = {split: set(data[split][contract.SCENE_ID]) for split in SPLITS}
  for i, a in enumerate(SPLITS):
    for b in SPLITS[i + 1:]:
      assert not origins[a] & origins[b]
      assert not scenes[a] & scenes[b]


def test_labels(built):
  _, builder, data = built
  k = DEFAULT_PARAMS["num_classes"]
  assert (data["unlabelled"][contract.LABEL] == contract.IGNORE_INDEX).all()
  for split in ("train", "validation", "test"):
    label, valid = data[split][contract.LABEL], data[split][contract.VALID]
    known = label != contract.IGNORE_INDEX
    assert known.mean() > 0.9
    assert label[known].max() < k
    # Ignored exactly where no date sees the ground.
    np.testing.assert_array_equal(~known, ~valid.any(axis=1))
  # Every class appears in the training split.
  train = data["train"][contract.LABEL]
  assert set(np.unique(train[train != contract.IGNORE_INDEX])) == set(range(k))


def test_clouds_are_bright_and_invalid(built):
  _, _, data = built
  image, valid = data["train"][contract.IMAGE], data["train"][contract.VALID]
  assert 0.5 < valid.mean() < 0.98
  b02 = image[..., S2_BANDS.index("B02")].astype(np.float64)
  b10 = image[..., S2_BANDS.index("B10")].astype(np.float64)
  cloudy = ~valid & (b02 > 3000)  # under clouds, not merely shadow
  assert cloudy.sum() > 0.25 * (~valid).sum()
  assert b02[~valid].mean() > b02[valid].mean() + 1000
  assert b10[cloudy].mean() > 5 * b10[valid].mean()  # cirrus band sees clouds
  clear = _make(cloud_fraction=0.0).generate_scene("train", 0)
  assert clear["valid"].all()
  assert (clear["label"] != contract.IGNORE_INDEX).all()


def test_metadata(built):
  _, builder, data = built
  meta = builder.info.metadata
  assert meta[contract.META_BANDS] == S2_BANDS
  assert len(meta[contract.META_MEAN]) == len(meta[contract.META_STD]) == len(S2_BANDS)
  assert all(s > 0 for s in meta[contract.META_STD])
  assert meta[contract.META_CLASS_NAMES] == ["cereal", "maize", "rapeseed", "grassland",
                                             "forest", "urban"]
  assert meta[contract.META_IGNORE_INDEX] == contract.IGNORE_INDEX
  assert meta[contract.META_GSD] == 10.0
  assert meta[contract.META_NUM_DATES] == DEFAULT_PARAMS["num_dates"]
  assert meta[contract.META_TILE_SIZE] == TINY["tile_size"]
  assert meta[contract.META_PARAMS]["num_tiles"] == TINY["num_tiles"]
  # Statistics over the valid pixels of the unlabelled and train splits.
  pixels = np.concatenate([data[s][contract.IMAGE][data[s][contract.VALID]]
                           for s in ("unlabelled", "train")]).astype(np.float64)
  np.testing.assert_allclose(meta[contract.META_MEAN], pixels.mean(0), rtol=1e-6)
  np.testing.assert_allclose(meta[contract.META_STD], pixels.std(0), rtol=1e-6)
  counts = meta["class_pixel_counts"]
  for split in SPLITS:
    label = data[split][contract.LABEL]
    expected = np.bincount(label[label != contract.IGNORE_INDEX].ravel(), minlength=6)
    assert counts[split] == expected.tolist()
  # The summary prints without error and names the classes.
  assert "grassland" in datasets.summary(builder)


def test_reopening_checks_parameters(built):
  root, _, data = built
  again = datasets.prepare(_cfg(root), log=lambda *_: None)  # already prepared: just opens
  np.testing.assert_array_equal(_read(again, "test")[contract.IMAGE],
                                data["test"][contract.IMAGE])
  with pytest.raises(DataError, match="other parameters"):
    datasets.prepare(_cfg(root, seed=5), log=lambda *_: None)


def test_deterministic(built, tmp_path):
  _, _, data = built
  # Same seed, only the train split, another folder: byte-identical train tiles, whatever
  # the other splits are (each split draws from its own seed stream).
  only_train = {"train": TINY["num_tiles"]["train"]}
  again = datasets.prepare(_cfg(tmp_path, num_tiles=only_train), log=lambda *_: None)
  rebuilt = _read(again, "train")
  for key in data["train"]:
    if isinstance(rebuilt[key], np.ndarray):
      np.testing.assert_array_equal(rebuilt[key], data["train"][key])
      assert rebuilt[key].tobytes() == data["train"][key].tobytes()
    else:
      assert rebuilt[key] == data["train"][key]
  # Scene generation is a pure function; another seed gives other data.
  a, b, other = _make().generate_scene("test", 1), _make().generate_scene("test", 1), \
      _make(seed=1).generate_scene("test", 1)
  for key in ("image", "valid", "label", "dates"):
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["image"], other["image"])
  assert not np.array_equal(a["label"], other["label"])


def _per_pixel(data, splits):
  """Pixels observed on every date: features [N, T, C] and labels [N]."""
  x, y = [], []
  for split in splits:
    image, valid, label = (data[split][contract.IMAGE], data[split][contract.VALID],
                           data[split][contract.LABEL])
    ok = valid.all(axis=1) & (label != contract.IGNORE_INDEX)           # [N,H,W]
    x.append(np.moveaxis(image, 1, 3)[ok].astype(np.float64))          # [P,T,C]
    y.append(label[ok])
  return np.concatenate(x), np.concatenate(y)


def _centroid_accuracy(f_train, y_train, f_test, y_test, k):
  centroids = np.stack([f_train[y_train == c].mean(0) for c in range(k)])
  dist = ((f_test[:, None, :] - centroids[None]) ** 2).sum(-1)
  return (dist.argmin(1) == y_test).mean()


def _linear_accuracy(f_train, y_train, f_test, y_test, k):
  """Least-squares one-hot regression: a per-pixel linear classifier."""
  a = np.concatenate([f_train, np.ones((len(f_train), 1))], 1)
  w = np.linalg.lstsq(a, np.eye(k)[y_train], rcond=None)[0]
  return ((np.concatenate([f_test, np.ones((len(f_test), 1))], 1) @ w).argmax(1)
          == y_test).mean()


def test_classes_differ_by_temporal_signature(built):
  """The time series tells the classes apart much better than chance, and clearly better
  than any single date does (classes look alike on single dates by design)."""
  _, _, data = built
  k, t = DEFAULT_PARAMS["num_classes"], DEFAULT_PARAMS["num_dates"]
  x_train, y_train = _per_pixel(data, ["train"])
  x_test, y_test = _per_pixel(data, ["validation", "test"])
  assert len(y_train) > 2000 and len(y_test) > 1000
  mean, std = x_train.mean(0), x_train.std(0)
  f_train, f_test = (x_train - mean) / std, (x_test - mean) / std
  chance = 1.0 / k

  flat = lambda f: f.reshape(len(f), -1)  # noqa: E731
  ncc_series = _centroid_accuracy(flat(f_train), y_train, flat(f_test), y_test, k)
  ncc_dates = [_centroid_accuracy(f_train[:, i], y_train, f_test[:, i], y_test, k)
               for i in range(t)]
  lin_series = _linear_accuracy(flat(f_train), y_train, flat(f_test), y_test, k)
  lin_dates = [_linear_accuracy(f_train[:, i], y_train, f_test[:, i], y_test, k)
               for i in range(t)]
  summary = (f"centroid: series {ncc_series:.3f}, dates {np.round(ncc_dates, 3)}; "
             f"linear: series {lin_series:.3f}, dates {np.round(lin_dates, 3)}")
  assert ncc_series > 2.5 * chance, summary
  assert ncc_series > max(ncc_dates) + 0.05, summary
  assert lin_series > 3.5 * chance, summary
  assert lin_series > max(lin_dates) + 0.12, summary
  # ...but not trivially separable per pixel: room left for context and learnt features.
  assert lin_series < 0.95, summary


def test_band_selection_and_single_date():
  g = _make(num_bands=4, num_dates=1).generate_scene("train", 0)
  assert g["image"].shape == (1, 64, 64, 4)
  assert _make(num_bands=4)._tile_layout()["bands"] == ["B02", "B03", "B04", "B08"]
  b = _make(bands=["B08", "B04"])
  assert b._tile_layout()["bands"] == ["B08", "B04"]
  full = _make().generate_scene("train", 2)
  two = b.generate_scene("train", 2)
  # A band selection is exactly a view of the full spectrum (same ground, clouds, noise).
  np.testing.assert_array_equal(two["label"], full["label"])
  np.testing.assert_array_equal(two["valid"], full["valid"])
  np.testing.assert_array_equal(
      two["image"], full["image"][..., [S2_BANDS.index("B08"), S2_BANDS.index("B04")]])


def test_more_classes_than_named():
  b = _make(num_classes=10, scene_size=128, tile_size=32)
  names = b._tile_layout()["class_names"]
  assert names[:8] == ["cereal", "maize", "rapeseed", "grassland", "forest", "urban",
                       "sugar_beet", "water"]
  assert names[8:] == ["class_8", "class_9"]
  labels = np.concatenate([b.generate_scene("train", i)["label"].ravel() for i in range(3)])
  assert set(np.unique(labels[labels != contract.IGNORE_INDEX])) == set(range(10))


@pytest.mark.parametrize("key,value", [
    ("num_classes", 1), ("num_classes", 300), ("num_dates", 0), ("tile_size", 2),
    ("scene_size", 70), ("bands", ["B02", "B99"]), ("bands", ["B02", "B02"]), ("bands", []),
    ("num_bands", 14), ("num_tiles", {}), ("num_tiles", {"train": 0}),
    ("num_tiles", {"bad split": 4}), ("num_tiles", {"validation": 4}), ("cloud_fraction", 1.0),
    ("noise_std", -1.0), ("field_size", 1), ("zone_size", 4), ("last_doy", 10),
    ("seed", -1), ("seed", 1.5), ("zone_purity", 2.0), ("field_mixing", True),
])
def test_bad_values_raise_config_error(key, value):
  with pytest.raises(ConfigError, match=f"'{key}'"):
    _make(**{key: value})


def test_unknown_key_raises_config_error(tmp_path):
  with pytest.raises(ConfigError, match="num_clases"):
    datasets.prepare(_cfg(tmp_path, num_clases=5), log=lambda *_: None)
  assert not any(tmp_path.rglob("dataset_info.json"))
