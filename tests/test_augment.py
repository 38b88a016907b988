"""Views: exact geometry (dihedral + shared or shifted crops), per-view independence (dates
included), device-count independence of the per-example randomness."""

import dataclasses

import jax
import numpy as np
import pytest

from ee_jax import augment
from ee_jax.runtime import parallel
from ee_jax.errors import ConfigError

GEOMETRY_ONLY = augment.AugmentConfig(crop_size=8, gain=0.0, offset=0.0, noise_std=0.0,
                                      band_dropout=0.0, cloud_prob=0.0)


def test_dihedral_roundtrip_and_group():
  x = np.random.default_rng(0).normal(size=(6, 6, 2)).astype(np.float32)
  undo = jax.jit(lambda x, k: augment.undo_dihedral(augment.apply_dihedral(x, k), k))
  apply = jax.jit(augment.apply_dihedral)
  images = []
  for k in range(8):
    np.testing.assert_array_equal(undo(x, k), x)                   # traced k
    rect = x[:, :4]                                                # static k: any shape
    np.testing.assert_array_equal(
        augment.undo_dihedral(augment.apply_dihedral(rect, k), k), rect)
    images.append(np.asarray(apply(x, k)))
  assert len({im.tobytes() for im in images}) == 8                 # 8 distinct elements


def _coordinate_tiles(b, t, size):
  """Each pixel holds its ground (row, col) and its date index, as uint16 'bands'."""
  rr, cc = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  tile = np.stack([np.broadcast_to(rr, (t, size, size)), np.broadcast_to(cc, (t, size, size)),
                   np.broadcast_to(np.arange(t)[:, None, None], (t, size, size))], -1)
  return np.broadcast_to(tile, (b, t, size, size, 3)).astype(np.uint16)


def test_views_map_back_to_ground_pixels():
  b, t, size = 6, 3, 12
  image = _coordinate_tiles(b, t, size)
  valid = np.ones((b, t, size, size), bool)
  valid[:, :, 5, 7] = False                               # a nodata pixel on every date
  cfg = dataclasses.replace(GEOMETRY_ONLY, num_dates=2)
  v1, v2, offset = jax.jit(augment.make_views, static_argnames="cfg")(
      jax.random.key(0), 3, np.arange(b), image, valid, np.zeros(3), np.ones(3), cfg=cfg)
  ks = np.concatenate([v1["dihedral"], v2["dihedral"]])
  assert len(set(ks.tolist())) > 1                        # the geometry was really exercised
  for v in (v1, v2):
    assert v["image"].shape == (b, 2, 8, 8, 3) and v["valid"].shape == (b, 8, 8)
    for i in range(b):
      k, (r0, c0) = int(v["dihedral"][i]), offset[i]
      ground = np.moveaxis(augment.undo_dihedral(np.moveaxis(v["image"][i], 0, 2), k), 2, 0)
      dates = np.asarray(v["dates"][i])
      assert (np.diff(dates) > 0).all()
      expect = image[i, dates, r0:r0 + 8, c0:c0 + 8].astype(np.float32)
      expect = expect * valid[i, dates, r0:r0 + 8, c0:c0 + 8, None]   # nodata -> 0
      np.testing.assert_array_equal(ground, expect)
      np.testing.assert_array_equal(augment.undo_dihedral(v["valid"][i], k),
                                    valid[i, 0, r0:r0 + 8, c0:c0 + 8])
  # Date subsets are drawn independently per view.
  assert any((v1["dates"][i] != v2["dates"][i]).any() for i in range(b))


def test_photometric_and_clouds():
  b, t, size = 4, 1, 16
  rng = np.random.default_rng(0)
  image = rng.integers(900, 1100, size=(b, t, size, size, 4)).astype(np.uint16)
  valid = np.ones((b, t, size, size), bool)
  cfg = augment.AugmentConfig(cloud_prob=1.0, noise_std=0.0, band_dropout=0.0, dihedral=False,
                              cloud_fill=7.0)
  mean, std = np.full(4, 1000.0), np.full(4, 50.0)
  v1, v2, _ = jax.jit(augment.make_views, static_argnames="cfg")(
      jax.random.key(1), 0, np.arange(b), image, valid, mean, std, cfg=cfg)
  for v in (v1, v2):
    cloudy = ~np.asarray(v["valid"])
    frac = cloudy.mean(axis=(1, 2))
    assert (frac > 0).all() and (frac < 1).all()          # blobs, not all or nothing
    np.testing.assert_array_equal(np.asarray(v["image"])[:, 0][cloudy], 7.0)
    assert np.abs(np.asarray(v["image"])[:, 0][~cloudy]).max() <= 2.5  # normalised data
  assert (np.asarray(v1["valid"]) != np.asarray(v2["valid"])).any()
  # Gain/offset jitter is drawn per view: where both views are clear, they still differ.
  clear = np.asarray(v1["valid"] & v2["valid"])
  assert (np.asarray(v1["image"])[:, 0][clear] != np.asarray(v2["image"])[:, 0][clear]).all()


def test_views_independent_of_device_count():
  b, t, size = 4, 3, 10
  rng = np.random.default_rng(0)
  image = rng.integers(0, 3000, size=(b, t, size, size, 3)).astype(np.uint16)
  valid = rng.random((b, t, size, size)) > 0.1
  index = np.array([10, 11, 12, 13])
  cfg = augment.AugmentConfig(crop_size=8, num_dates=2, cloud_prob=0.5)
  mean, std = np.full(3, 1500.0), np.full(3, 800.0)
  key = jax.random.key(42)

  def views(image, valid, index, key):
    return augment.make_views(key, 7, index, image, valid, mean, std, cfg)

  one = jax.jit(views)(image, valid, index, key)
  two = parallel.pmap_step(views)(*parallel.shard((image, valid, index)),
                                  parallel.replicate(key))
  two = parallel.unshard(two)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                         one, two)


def test_config():
  cfg = augment.default_config()
  cfg.crop_size = 8
  assert augment.AugmentConfig.from_config(cfg) == augment.AugmentConfig(crop_size=8)
  with pytest.raises(ConfigError, match="unknown keys"):
    augment.AugmentConfig.from_config({"crop": 8})
  with pytest.raises(ConfigError, match="crop_size"):
    augment.make_views(jax.random.key(0), 0, np.arange(1), np.zeros((1, 1, 4, 4, 1), np.uint16),
                       np.ones((1, 1, 4, 4), bool), [0.0], [1.0], GEOMETRY_ONLY)
  assert augment.view_shape(augment.AugmentConfig(num_dates=2), (5, 12, 10, 4)) == (2, 10, 10, 4)
  np.testing.assert_allclose(augment.normalize(np.array([[3, 5]], np.uint16), [1, 1], [2, 4]),
                             [[1.0, 1.0]])


def test_date_dropout_hides_whole_dates_but_keeps_one():
  cfg = augment.AugmentConfig(crop_size=8, dihedral=False, gain=0, offset=0, noise_std=0,
                              band_dropout=0, cloud_prob=0, date_dropout=0.999)
  image = np.full((4, 3, 8, 8, 2), 1000, np.uint16)
  valid = np.ones((4, 3, 8, 8), bool)
  v1, v2, _ = augment.make_views(jax.random.key(0), 0, np.arange(4), image, valid,
                                 np.zeros(2), np.ones(2), cfg)
  for v in (v1, v2):
    dv = np.asarray(v["date_valid"])                    # [B, T, S, S]
    per_date = dv.all(axis=(2, 3)) | ~dv.any(axis=(2, 3))
    assert per_date.all()                               # whole dates hidden, not pixels
    assert (dv.any(axis=(2, 3)).sum(axis=1) == 1).all()  # exactly one date left
    hidden = ~dv[..., None].repeat(2, -1)
    assert (np.asarray(v["image"])[hidden] == 0).all()
    assert np.asarray(v["valid"]).all()                 # every pixel still seen once


def test_shifted_crops_realign_on_ground_pixels():
  b, t, size = 6, 2, 14
  image = _coordinate_tiles(b, t, size)
  cfg = dataclasses.replace(GEOMETRY_ONLY, crop_shift=3)
  v1, v2, base = jax.jit(augment.make_views, static_argnames="cfg")(
      jax.random.key(5), 1, np.arange(b), image, np.ones((b, t, size, size), bool),
      np.zeros(3), np.ones(3), cfg=cfg)
  o1, o2 = np.asarray(v1["crop_offset"]), np.asarray(v2["crop_offset"])
  assert (o1 != o2).any() and (np.abs(o1 - np.asarray(base)) <= 3).all()
  assert ((o1 >= 0) & (o1 <= size - 8) & (o2 >= 0) & (o2 <= size - 8)).all()
  ground = lambda v: augment.undo_dihedral_batch(v["image"][:, 0], v["dihedral"])  # noqa: E731
  g1, g2 = np.asarray(ground(v1)), np.asarray(ground(v2))
  for i in range(b):  # each view holds its own crop of the tile
    np.testing.assert_array_equal(g1[i, ..., :2], image[i, 0, o1[i, 0]:o1[i, 0] + 8,
                                                          o1[i, 1]:o1[i, 1] + 8, :2])
  aligned, ok = augment.align_views(g2, np.ones((b, 8, 8), bool), o1 - o2)
  aligned, ok = np.asarray(aligned), np.asarray(ok)
  np.testing.assert_array_equal(aligned[ok][..., :2], g1[ok][..., :2])  # same ground pixel
  overlap = np.prod(8 - np.abs(o1 - o2), axis=1)
  np.testing.assert_array_equal(ok.sum(axis=(1, 2)), overlap)           # exactly the overlap


@pytest.mark.parametrize("num_dates", [0, 2])
def test_disjoint_dates_never_share_an_acquisition(num_dates):
  b, t, size = 8, 5, 8
  image = _coordinate_tiles(b, t, size)
  cfg = dataclasses.replace(GEOMETRY_ONLY, num_dates=num_dates, disjoint_dates=True)
  v1, v2, _ = augment.make_views(jax.random.key(3), 0, np.arange(b), image,
                                 np.ones((b, t, size, size), bool), np.zeros(3), np.ones(3),
                                 cfg)
  for i in range(b):
    if num_dates:
      d1, d2 = set(np.asarray(v1["dates"][i]).tolist()), set(np.asarray(v2["dates"][i]).tolist())
      assert len(d1) == len(d2) == 2 and not d1 & d2
    else:  # in place: each date is observed in exactly one view, each view has one or more
      seen1 = np.asarray(v1["date_valid"][i]).any(axis=(1, 2))
      seen2 = np.asarray(v2["date_valid"][i]).any(axis=(1, 2))
      np.testing.assert_array_equal(seen1, ~seen2)
      assert seen1.any() and seen2.any()
      assert (np.asarray(v1["image"][i])[~seen1] == 0).all()
  with pytest.raises(ConfigError, match="disjoint_dates"):
    augment.make_views(jax.random.key(0), 0, np.arange(b), image, np.ones((b, t, size, size),
                       bool), np.zeros(3), np.ones(3), dataclasses.replace(cfg, num_dates=3))
  with pytest.raises(ConfigError, match="date_dropout"):
    augment.AugmentConfig.from_config(dict(disjoint_dates=True, date_dropout=0.5))


def test_shift_in_time_interpolates_towards_an_observed_neighbouring_date():
  t = 6
  x = np.broadcast_to(np.arange(t, dtype=np.float32)[:, None, None, None], (t, 3, 3, 2))
  valid = np.ones((t, 3, 3), bool)
  moved = [np.asarray(augment.shift_in_time(jax.random.key(s), x, valid, 0.4))
           for s in range(20)]
  for m in moved:
    assert np.allclose(m, m[:, :1, :1, :1])               # one shift per date, whole view
    d = m[:, 0, 0, 0] - np.arange(t)
    assert np.all(np.abs(d) <= 0.6 + 1e-6)                # |a| <= 0.4, |e| <= 0.2
    assert d[0] >= -1e-6 and d[-1] <= 1e-6                # no date before the first/after the last
  assert np.std([m[:, 0, 0, 0] - np.arange(t) for m in moved]) > 0.1
  np.testing.assert_allclose(augment.shift_in_time(jax.random.key(0), x, valid, 0.0), x)
  # An unobserved date (cloud, nodata: zeros) is never blended into its neighbours: dates
  # 1 and 3 (values 11, 13) only ever move towards dates 0 and 4 (10, 14), never towards 0.
  hidden = valid.copy()
  hidden[2] = False
  xh = np.where(hidden[..., None], x + 10.0, 0.0)
  for s in range(20):
    m = np.asarray(augment.shift_in_time(jax.random.key(s), xh, hidden, 0.9))[:, 0, 0, 0]
    assert 10.0 <= m[1] <= 11.0 and 13.0 <= m[3] <= 14.0


@pytest.mark.parametrize("per_date", [False, True])
def test_gain_offset_jitter_per_band_or_per_date_and_band(per_date):
  t, c = 3, 4
  image = np.full((1, t, 6, 6, c), 1000, np.uint16)            # the band mean: 0 normalised
  cfg = dataclasses.replace(GEOMETRY_ONLY, crop_size=6, dihedral=False, offset=0.3,
                            jitter_per_date=per_date)
  v1, _, _ = augment.make_views(jax.random.key(0), 0, np.arange(1), image,
                                np.ones((1, t, 6, 6), bool), np.full(c, 1000.0),
                                np.full(c, 100.0), cfg)
  x = np.asarray(v1["image"])[0]                                # [T, S, S, C] = the offsets
  assert np.allclose(x, x[:, :1, :1])                           # one draw per (date,) band
  assert np.abs(x).max() <= 0.3 and len(np.unique(x[0, 0, 0])) == c
  assert np.allclose(x[0], x[1]) != per_date                    # dates share it, or not
