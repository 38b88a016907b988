"""On-device normalisation and the two views of a tile (docs/design.md, "Two views per tile").

Geometry is tracked exactly: one random square crop shared by both views (each view's crop
optionally moved by up to `crop_shift` pixels), then an independent dihedral transform per
view (`apply_dihedral`), which the train step undoes on the feature maps (`undo_dihedral`)
and, for shifted crops, re-aligns (`align_views`) so pixel (i, j) of both views is the same
ground pixel.
Independent per view: dates subset (T > 1), an optional shift in time (`time_shift`),
per-band gain/offset (optionally per date too, like the atmosphere: `jitter_per_date`),
synthetic clouds (marked invalid), Gaussian noise, band dropout.

Randomness: each example's key is `fold_in(fold_in(base_key, step), global_index)`, so the
views of an example depend only on (seed, step, index), never on the device count or on
which device holds the example.

Every view's arrays are in the VIEW frame (after its dihedral transform):
  image      float32 [B, T', S, S, C]  normalised, augmented
  date_valid bool    [B, T', S, S]     pixel observed on that date (not nodata, not cloud)
  valid      bool    [B, S, S]         pixel usable: observed on ANY chosen date
                                       (`valid_reduce='any'`, default) or on ALL ('all')
  dihedral   int32   [B]               k in 0..7 of the view's transform
  dates      int32   [B, T']           which of the tile's T dates the view uses (sorted)
  clean      float32 [B, T', S, S, C]  the same crop and dates, normalised, before any hiding
                                       or photometric change (reconstruction targets)
  observed   bool    [B, T', S, S]     where `clean` was observed in the tile (not nodata,
                                       not a real cloud): where a target exists
  crop_offset int32  [B, 2]            (row, col) of the view's crop in the tile
plus, returned separately, the shared crop's offset int32 [B, 2] (the views' offsets when
`crop_shift` is 0).
"""

import dataclasses
import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ee_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Augmentation parameters; intensities are in normalised units (band std = 1)."""
  crop_size: int = 0                  # square crop shared by both views; 0 -> min(H, W)
  crop_shift: int = 0                 # each view's crop moved by up to this many pixels per
                                      # axis (within the tile); the loss uses the overlap
  dihedral: bool = True               # random flips/rot90 per view (undone on features)
  gain: float = 0.1                   # per-band gain ~ 1 + U(-gain, gain)
  offset: float = 0.1                 # per-band offset ~ U(-offset, offset)
  jitter_per_date: bool = False       # gain/offset drawn per date and band (atmosphere)
  time_shift: float = 0.0             # T > 1: each date moved by a ~ U(-s, s) common to the
                                      # view plus U(-s/2, s/2) of its own (s = this, in date
                                      # intervals), by interpolating with the next/previous
  noise_std: float = 0.05             # per-pixel Gaussian noise
  band_dropout: float = 0.1           # per-band probability of zeroing (never all bands)
  cloud_prob: float = 0.2             # per date and view: probability of synthetic clouds
  cloud_blobs: int = 3                # Gaussian blobs per cloud field (at least one is on)
  cloud_radius: Tuple[float, float] = (0.1, 0.3)  # blob radii, fraction of crop size
  cloud_fill: float = 2.0             # value written under clouds (bright, like clouds)
  num_dates: int = 0                  # dates per view (random subset, sorted); 0 -> all T
  date_dropout: float = 0.0           # per date and view: probability of hiding that date
                                      # (kept in place, marked invalid: works with 'stack')
  disjoint_dates: bool = False        # the two views never share a date: with num_dates,
                                      # two disjoint subsets; else a random split of the T
                                      # dates, the other view's dates hidden in place
  valid_reduce: str = "any"           # per-pixel valid over chosen dates: 'any' | 'all'

  @classmethod
  def from_config(cls, cfg) -> "AugmentConfig":
    """From a ConfigDict/dict (e.g. `config.augment`); unknown keys are an error."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ConfigError(f"config.augment: unknown keys {unknown}; known: {sorted(names)}")
    if "cloud_radius" in d:
      d["cloud_radius"] = tuple(d["cloud_radius"])
    out = cls(**d)
    if out.valid_reduce not in ("any", "all"):
      raise ConfigError(f"config.augment.valid_reduce: '{out.valid_reduce}' is not 'any'/'all'")
    if out.disjoint_dates and out.date_dropout > 0:
      raise ConfigError("config.augment: disjoint_dates and date_dropout both hide dates; "
                        "use one of them")
    return out


def default_config() -> ml_collections.ConfigDict:
  """`AugmentConfig`'s defaults as a ConfigDict, to embed as `config.augment`."""
  return ml_collections.ConfigDict(dataclasses.asdict(AugmentConfig()))


def normalize(image, mean, std):
  """uint16 digital numbers -> float32 (x - mean) / std, per band (last axis)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (image.astype(jnp.float32) - mean) / std


def model_input(image, valid, mean, std):
  """What every backbone is fed, in training, fine-tuning, scene inference and `ee_jax.api`
  alike: uint16 [..., T, H, W, C] and bool [..., T, H, W] -> (normalised float32 with
  unobserved pixels at 0, the band mean; the dates' float weights [..., T, H, W])."""
  x = normalize(image, mean, std)
  x = jnp.where(valid[..., None], x, 0.0)
  return x, valid.astype(jnp.float32)


# ---------------------------------------------------------------- dihedral group (8 elements)
# k in 0..7: k >= 4 flips left-right first, then rotates by 90 degrees (k % 4) times.

def _fwd(x, k, xp=jnp):
  if k >= 4:
    x = xp.flip(x, axis=1)
  return xp.rot90(x, k % 4, axes=(0, 1))


def _inv(x, k, xp=jnp):
  x = xp.rot90(x, -(k % 4), axes=(0, 1))
  if k >= 4:
    x = xp.flip(x, axis=1)
  return x


def _dihedral(fn, x, k):
  """Static k: plain flips/rotations. Traced k: ONE gather through a constant [8, H*W]
  table of source pixels (not a switch over 8 branches, which under vmap computes all 8)."""
  if isinstance(k, int):
    return fn(x, k)
  h, w = x.shape[:2]
  if h != w:
    raise ValueError(f"a traced dihedral index needs square [H, W, ...] arrays; got {x.shape}")
  iota = np.arange(h * w).reshape(h, w)
  table = np.stack([fn(iota, i, xp=np).reshape(-1) for i in range(8)]).astype(np.int32)
  src = jnp.asarray(table)[k]
  return x.reshape((h * w,) + x.shape[2:])[src].reshape(x.shape)


def apply_dihedral(x, k):
  """Dihedral element k (int or traced int32 scalar) applied to x [H, W, ...]."""
  return _dihedral(_fwd, x, k)


def undo_dihedral(x, k):
  """Inverse of `apply_dihedral(., k)` on x [H, W, ...]."""
  return _dihedral(_inv, x, k)


def undo_dihedral_batch(x, k):
  """`undo_dihedral` per example: x [B, H, W, ...], k [B]."""
  return jax.vmap(undo_dihedral)(x, k)


# ---------------------------------------------------------------- per-example pieces

def example_keys(base_key, step, index):
  """Per-example keys [B]: fold_in(fold_in(base_key, step), global example index)."""
  step_key = jax.random.fold_in(base_key, jnp.asarray(step, jnp.uint32))
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(
      jnp.asarray(index).astype(jnp.uint32))


def cloud_field(key, size: int, cfg: AugmentConfig):
  """bool [size, size]: blob-shaped clouds (thresholded sum of random elliptic Gaussians)
  with probability `cfg.cloud_prob`, else all False."""
  k_on, k_c, k_r, k_b = jax.random.split(key, 4)
  n = max(cfg.cloud_blobs, 1)
  centres = jax.random.uniform(k_c, (n, 2)) * size
  lo, hi = cfg.cloud_radius
  radii = jax.random.uniform(k_r, (n, 2), minval=lo, maxval=hi) * size
  blob_on = jax.random.bernoulli(k_b, 0.5, (n,)).at[0].set(True)
  yy, xx = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32) + 0.5,
                        jnp.arange(size, dtype=jnp.float32) + 0.5, indexing="ij")
  d2 = (((yy[None] - centres[:, 0, None, None]) / radii[:, 0, None, None]) ** 2 +
        ((xx[None] - centres[:, 1, None, None]) / radii[:, 1, None, None]) ** 2)
  field = jnp.sum(jnp.exp(-d2) * blob_on[:, None, None], axis=0)
  return jax.random.bernoulli(k_on, cfg.cloud_prob) & (field > 0.5)


def shift_in_time(key, image, valid, amount: float):
  """The series image [T, S, S, C] as if acquired a little earlier or later: date t becomes
  (1 - |d_t|) x_t + |d_t| x_(t +- 1), d_t = a + e_t, a ~ U(-amount, amount) for the view,
  e_t ~ U(-amount / 2, amount / 2), |d_t| <= 1. Where the neighbouring date is unobserved,
  the date is kept as is. Tiles of one scene share its calendar (phenology ahead or behind,
  acquisition dates); unless the views differ in it, the calendar alone tells scenes apart.
  """
  t = image.shape[0]
  k_all, k_each = jax.random.split(key)
  d = (jax.random.uniform(k_all, (), minval=-amount, maxval=amount)
       + jax.random.uniform(k_each, (t,), minval=-amount / 2, maxval=amount / 2))
  d = jnp.clip(d, -1.0, 1.0)
  later = jnp.minimum(jnp.arange(t) + 1, t - 1)
  earlier = jnp.maximum(jnp.arange(t) - 1, 0)
  other = jnp.where(d > 0, later, earlier)
  w = jnp.abs(d)[:, None, None] * valid[other]                       # [T, S, S]
  return (1.0 - w[..., None]) * image + w[..., None] * image[other]


def _view(key, image, valid, cfg: AugmentConfig, dates=None, keep=None):
  """One view of a cropped example: image [T, S, S, C] float, valid [T, S, S] bool.

  `dates` int32 [T'] (the view's dates) or `keep` bool [T] (dates kept in place, the others
  hidden) come from `_disjoint_dates` when the views must not share a date.
  """
  k_dates, k_dih, k_gain, k_off, k_cloud, k_noise, k_drop, k_hide = jax.random.split(key, 8)
  t, s, _, c = image.shape
  t_view = cfg.num_dates or t
  if t_view > t:
    raise ConfigError(f"config.augment.num_dates={t_view} but the tiles have {t} dates")
  if dates is None:
    dates = jnp.arange(t, dtype=jnp.int32)
    if t_view < t:
      dates = jnp.sort(jax.random.choice(k_dates, t, (t_view,), replace=False))
  dates = dates.astype(jnp.int32)
  if t_view < t:
    image, valid = image[dates], valid[dates]
  clean, observed = image, valid  # before any hiding or photometric change: the truth
  if keep is not None:
    valid = valid & keep[:, None, None]
    image = jnp.where(keep[:, None, None, None], image, 0.0)
  if cfg.date_dropout > 0 and t_view > 1:
    # The two views see different acquisitions of the same ground (at least one date each).
    hide = jax.random.bernoulli(k_hide, cfg.date_dropout, (t_view,))
    hide = hide.at[jax.random.randint(k_hide, (), 0, t_view)].set(False)
    valid = valid & ~hide[:, None, None]
    image = jnp.where(hide[:, None, None, None], 0.0, image)

  if cfg.time_shift > 0 and t_view > 1:
    image = shift_in_time(jax.random.fold_in(k_dates, 1), image, valid, cfg.time_shift)
  jshape = (t_view, 1, 1, c) if cfg.jitter_per_date else (c,)
  gain = 1.0 + jax.random.uniform(k_gain, jshape, minval=-cfg.gain, maxval=cfg.gain)
  offset = jax.random.uniform(k_off, jshape, minval=-cfg.offset, maxval=cfg.offset)
  image = image * gain + offset
  if cfg.cloud_prob > 0:
    clouds = jax.vmap(lambda k: cloud_field(k, s, cfg))(jax.random.split(k_cloud, t_view))
    image = jnp.where(clouds[..., None], cfg.cloud_fill, image)
    valid = valid & ~clouds
  if cfg.noise_std > 0:
    image = image + cfg.noise_std * jax.random.normal(k_noise, image.shape)
  if cfg.band_dropout > 0:
    drop = jax.random.bernoulli(k_drop, cfg.band_dropout, (c,))
    drop = drop & ~jnp.all(drop)
    image = jnp.where(drop, 0.0, image)

  k = jax.random.randint(k_dih, (), 0, 8) if cfg.dihedral else jnp.zeros((), jnp.int32)
  # Dihedral acts on the two spatial axes: move them first.
  spatial = lambda a: jnp.moveaxis(apply_dihedral(jnp.moveaxis(a, 0, 2), k), 2, 0)  # noqa: E731
  image, valid = spatial(image), spatial(valid)
  pixel_valid = valid.any(axis=0) if cfg.valid_reduce == "any" else valid.all(axis=0)
  return dict(image=image, date_valid=valid, valid=pixel_valid, dihedral=k.astype(jnp.int32),
              dates=dates, clean=spatial(clean), observed=spatial(observed))


def _example(key, image, valid, mean, std, cfg: AugmentConfig):
  """Both views of one example: image uint16 [T, H, W, C], valid bool [T, H, W]."""
  t, h, w, c = image.shape
  s = cfg.crop_size or min(h, w)
  if s > min(h, w):
    raise ConfigError(f"config.augment.crop_size={s} exceeds the tile size {h}x{w}")
  k_crop, k1, k2 = jax.random.split(key, 3)
  kr, kc = jax.random.split(k_crop)
  base = jnp.stack([jax.random.randint(kr, (), 0, h - s + 1),
                    jax.random.randint(kc, (), 0, w - s + 1)]).astype(jnp.int32)
  x, _ = model_input(image, valid, mean, std)  # nodata -> the band mean
  split = ({}, {})
  if cfg.disjoint_dates:
    split = _disjoint_dates(jax.random.fold_in(k_crop, 1), t, cfg)
  views = []
  for i, (k_view, date_args) in enumerate(zip((k1, k2), split)):
    offset = base
    if cfg.crop_shift > 0:
      move = jax.random.randint(jax.random.fold_in(k_crop, 2 + i), (2,), -cfg.crop_shift,
                                cfg.crop_shift + 1)
      offset = jnp.clip(base + move, 0, jnp.array([h - s, w - s])).astype(jnp.int32)
    crop = jax.lax.dynamic_slice(x, (0, offset[0], offset[1], 0), (t, s, s, c))
    crop_valid = jax.lax.dynamic_slice(valid, (0, offset[0], offset[1]), (t, s, s))
    views.append(dict(_view(k_view, crop, crop_valid, cfg, **date_args), crop_offset=offset))
  return views[0], views[1], base


def align_views(x, valid, shift):
  """View-2 maps re-indexed on view 1's pixels: out[i, j] = x[i + dr, j + dc].

  x [B, S, S, ...] and valid [B, S, S] (view 2, dihedral undone), shift int [B, 2] =
  view 1's crop offset - view 2's. Pixels of view 1 that view 2 does not hold are invalid.
  """
  def one(x, valid, shift):
    s_r, s_c = valid.shape
    rows = jnp.arange(s_r)[:, None] + shift[0]
    cols = jnp.arange(s_c)[None, :] + shift[1]
    inside = (rows >= 0) & (rows < s_r) & (cols >= 0) & (cols < s_c)
    src = (jnp.clip(rows, 0, s_r - 1) * s_c + jnp.clip(cols, 0, s_c - 1)).reshape(-1)
    out = x.reshape((s_r * s_c,) + x.shape[2:])[src].reshape(x.shape)
    return out, valid.reshape(-1)[src].reshape(valid.shape) & inside
  return jax.vmap(one)(x, valid, shift)


def _disjoint_dates(key, t: int, cfg: AugmentConfig):
  """The two views' dates, with no date in both (`_view` keyword arguments per view).

  Why: within one acquisition, both views carry the same sensor noise and atmosphere, so
  matching a pixel to itself can succeed on that fingerprint alone; across acquisitions
  only the ground (its cover and phenology) is shared, which is what the features should
  describe. With num_dates n: two disjoint random subsets of n dates (2n <= T). Without:
  each date goes to one view or the other (at least one each), hidden in place in the
  other, so the model's input keeps its T dates (temporal='stack').
  """
  if t < 2:
    raise ConfigError(f"config.augment.disjoint_dates needs tiles with 2+ dates; they have {t}")
  perm = jax.random.permutation(key, t)
  n = cfg.num_dates
  if n:
    if 2 * n > t:
      raise ConfigError(f"config.augment.disjoint_dates: two disjoint subsets of num_dates={n} "
                        f"need {2 * n} dates; the tiles have {t}")
    return dict(dates=jnp.sort(perm[:n])), dict(dates=jnp.sort(perm[n:2 * n]))
  side = jax.random.bernoulli(jax.random.fold_in(key, 1), 0.5, (t,))
  # Force at least one date per view: the first two dates of the permutation, one each.
  side = side.at[perm[0]].set(True).at[perm[1]].set(False)
  return dict(keep=side), dict(keep=~side)


def make_views(base_key, step, index, image, valid, mean, std, cfg: AugmentConfig):
  """The two views of a batch (see the module docstring for the outputs).

  image uint16 [B, T, H, W, C], valid bool [B, T, H, W], index [B] global example indices,
  mean/std [C] per-band statistics from the dataset metadata. Jittable; `cfg` is static.
  """
  keys = example_keys(base_key, step, index)
  fn = functools.partial(_example, mean=mean, std=std, cfg=cfg)
  v1, v2, offset = jax.vmap(fn)(keys, image, valid)
  return v1, v2, offset


def view_shape(cfg: AugmentConfig, tile_shape):
  """(T', S, S, C) of a view of tiles shaped (T, H, W, C): the model's input shape."""
  t, h, w, c = tile_shape
  s = cfg.crop_size or min(h, w)
  return (cfg.num_dates or t, s, s, c)
