"""Synthetic Sentinel-2-like land-cover time series, generated from a seed (no input files).

The fast test fixture of the project, and a controlled benchmark on which dense contrastive
pre-training should help segmentation when labels are scarce. Everything is vectorised
numpy and a pure function of the parameters: the same `seed` gives byte-identical
examples, whatever splits are built and in whatever order.

How a scene is made (`scene_size` x `scene_size` pixels, cut into `tile_size` tiles):

* **Fields.** A Voronoi tessellation of jittered grid points (`field_size` pixels apart),
  on domain-warped coordinates so boundaries are wiggly. Each field has one class.
* **Context.** A coarser tessellation (`zone_size`) makes land-use zones; each zone has a
  dominant class (share `zone_purity`) and a random mix of the others, so the classes of
  neighbouring fields are correlated: context helps, as in real landscapes.
* **Spectral-temporal signatures.** A pixel is a linear mix of endmember spectra (soil,
  crop, grass, forest canopy, straw, litter, flowers, water, impervious), 13 S2 L1C bands in
  top-of-atmosphere reflectance x 10000. Each class has its own phenology: the abundance of
  each endmember over the day of year (double-logistic green-up / senescence, harvests,
  mowing, flowering). Many classes look alike on any single date (green crop vs green
  grass vs green canopy; bare soil before emergence vs after harvest) and differ in the
  timing and shape of their curves, so one date is much less informative than the series.
  The first classes are named (cereal, maize, rapeseed, grassland, forest, urban,
  sugar_beet, water); beyond those, `class_<k>` are procedural crops drawn from `seed`.
* **Nuisances.** Per scene: a regional shift of the calendar (`scene_phase_jitter_days`)
  and acquisition dates jittered around an even spread over the season
  (`date_jitter_days`). Per field: shift of the calendar (sowing date,
  `phase_jitter_days`), amplitude of the vegetation cycle (`amplitude_jitter`), a share of
  another class's signature (intercrops, weeds; up to `field_mixing`), brightness
  (`brightness_jitter`) and colour (`spectral_jitter`). Within a field: spatially
  correlated texture (`texture_std`). Per date: atmospheric gain and haze
  (`atmosphere_jitter`). A small point-spread blur mixes pixels at field boundaries. Per
  pixel: Gaussian sensor noise (`noise_std`, digital numbers).
* **Clouds.** Per scene and date a cloud cover drawn around `cloud_fraction` (some dates
  clear, some very cloudy); soft-edged bright clouds (high in the cirrus band B10 too) and
  their displaced shadows. `valid` is False under clouds and strong shadows; thin cloud
  edges stay valid but slightly contaminated, as with a real cloud mask.

Labels: uint8 class index of the ground (static over the dates), also under a cloud on
some dates (the ground is seen on the others; `valid` says which dates). A pixel that is
unobserved on *every* date gets `ignore_index` (255): nothing in the input shows it. The
'unlabelled' split (pre-training) carries 255 everywhere; its tiles come from their own
scenes like every split, so no split leaks into another (splits are spatial by
construction: each split's scenes are generated from their own seed stream).

With the defaults (6 classes, 6 dates, 13 bands) a per-pixel linear classifier of the full
time series reaches roughly 70% accuracy, on one date roughly 45% (chance: 17%);
averaging over a field helps, and nonlinear temporal features help more: the task is
learnable, but not trivially from one pixel, which is where pre-training can pay off.
Every nuisance is a parameter, to make the benchmark easier or harder.
"""

import datetime
import zlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.errors import ConfigError
from tfds_builders.common import TileBuilder

# Sentinel-2 L1C band order.
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
            "B11", "B12"]
# Bands kept when `num_bands` is set (most informative first); returned in S2 order.
_BAND_PRIORITY = ["B04", "B03", "B02", "B08", "B11", "B12", "B05", "B06", "B07", "B8A",
                  "B01", "B09", "B10"]

# Endmember spectra, top-of-atmosphere reflectance x 10000, in S2_BANDS order.
_ENDMEMBERS = {
    #          B01   B02   B03   B04   B05   B06   B07   B08   B8A   B09  B10   B11   B12
    "soil":   [1500, 1350, 1450, 1700, 1950, 2150, 2300, 2400, 2500, 800, 30, 3100, 2600],
    "crop":   [1350, 1050, 1000, 650, 1250, 2800, 3500, 3700, 3850, 1150, 20, 2000, 1000],
    "grass":  [1350, 1080, 1100, 800, 1350, 2500, 3000, 3200, 3350, 1000, 20, 2300, 1250],
    "canopy": [1300, 1000, 850, 550, 950, 2200, 2700, 2850, 2950, 900, 15, 1500, 750],
    "straw":  [1600, 1450, 1650, 1900, 2200, 2500, 2650, 2750, 2850, 950, 30, 3300, 2700],
    "litter": [1350, 1150, 1150, 1200, 1400, 1700, 1850, 1950, 2050, 650, 20, 2300, 1700],
    "flower": [1400, 1150, 1900, 2000, 2300, 2900, 3200, 3300, 3400, 1050, 25, 2300, 1300],
    "water":  [1350, 1150, 950, 650, 550, 450, 420, 380, 350, 120, 10, 150, 100],
    "urban":  [1700, 1600, 1650, 1750, 1850, 1950, 2050, 2100, 2150, 700, 30, 2500, 2200],
}
_CLOUD = [5600, 5500, 5400, 5400, 5500, 5600, 5600, 5700, 5600, 3200, 1500, 4200, 3100]
# Additive haze per unit of haze (strongest in the blue), per band.
_HAZE = [1.0, 0.9, 0.7, 0.55, 0.45, 0.4, 0.35, 0.3, 0.3, 0.1, 0.0, 0.1, 0.05]
_EM_NAMES = list(_ENDMEMBERS)

# Named classes: background endmember, and for each other endmember a constant share plus
# double-logistic terms (amplitude, start day, end day, steepness in days).
_NAMED_CLASSES = [
    ("cereal", "soil", {  # winter wheat: winter cover, spring growth, ripening, harvest
        "crop": (0.0, [(0.3, -60, 95, 10), (0.95, 95, 180, 10), (0.25, 295, 430, 10)]),
        "straw": (0.0, [(0.8, 180, 215, 5)])}),
    ("maize", "soil", {  # late sowing, summer peak, brown before the autumn harvest
        "crop": (0.0, [(0.95, 155, 255, 10)]),
        "litter": (0.0, [(0.7, 255, 290, 5)])}),
    ("rapeseed", "soil", {  # winter cover, early growth, yellow flowering in spring
        "crop": (0.0, [(0.35, -60, 70, 10), (0.9, 70, 175, 10), (0.4, 250, 430, 10)]),
        "flower": (0.0, [(0.55, 105, 140, 5)]),
        "straw": (0.0, [(0.7, 175, 205, 5)])}),
    ("grassland", "soil", {  # green all year, cut twice
        "grass": (0.55, [(0.35, 90, 285, 15), (-0.4, 150, 170, 4), (-0.4, 215, 235, 4)]),
        "litter": (0.0, [(0.25, 150, 175, 4), (0.25, 215, 240, 4)])}),
    ("forest", "litter", {  # deciduous canopy over dark litter
        "canopy": (0.35, [(0.6, 115, 290, 12)])}),
    ("urban", "urban", {  # impervious with some gardens
        "grass": (0.15, [(0.15, 100, 280, 15)])}),
    ("sugar_beet", "soil", {  # long season, late harvest
        "crop": (0.0, [(0.95, 135, 300, 14)])}),
    ("water", "water", {  # lakes with a summer algae bloom
        "crop": (0.0, [(0.08, 170, 240, 10)])}),
]

DEFAULT_PARAMS = {
    "seed": 0,
    "num_classes": 6,            # the first ones are named (cereal, maize, ...), then class_i
    "num_dates": 6,
    "tile_size": 32,
    "scene_size": 128,           # scenes are cut into (scene_size / tile_size)^2 tiles
    "bands": tuple(S2_BANDS),    # any S2 band names, in the order wanted (tuple: CLI-overridable)
    "num_bands": 0,              # > 0: keep the most informative `num_bands` of `bands`
    # Tiles per split (a split named "unlabelled" has label 255 everywhere); the defaults
    # build in about 15 s on 2 CPU cores (~370 MB).
    "num_tiles": {"unlabelled": 2048, "train": 512, "validation": 128, "test": 128},
    "year": 2021,
    "first_doy": 45,             # dates spread evenly between these days of the year
    "last_doy": 320,
    "date_jitter_days": 8,       # per scene
    "field_size": 12,            # mean field diameter, pixels (10 m)
    "zone_size": 48,             # land-use zones (context), pixels
    "zone_purity": 0.5,          # share of a zone's dominant class
    "scene_phase_jitter_days": 12.0,  # per scene (regional calendar), std
    "phase_jitter_days": 20.0,   # per field (sowing date), std
    "amplitude_jitter": 0.25,    # per field, std of the vegetation cycle's scale
    "field_mixing": 0.3,         # per field, up to this share of another class's signature
    "brightness_jitter": 0.08,   # per field, std of the brightness scale
    "spectral_jitter": 0.04,     # per field and band, std of a colour scale
    "texture_std": 0.25,         # within-field, spatially correlated
    "atmosphere_jitter": 0.03,   # per scene and date: gain std; haze up to 10x this x 1000 DN
    "noise_std": 250.0,          # sensor noise, digital numbers
    "cloud_fraction": 0.15,      # mean cloud cover per date
}

_GSD = 10.0
_CRS = "EPSG:32633"
_MAX_DN = 10000


# --- small numpy helpers ----------------------------------------------------------------

def _smooth_noise(rng, shape, size, sigma):
  """Unit-variance Gaussian-filtered white noise, `shape + (size, size)`, periodic."""
  white = rng.standard_normal(tuple(shape) + (size, size)).astype(np.float32)
  f = np.fft.fftfreq(size)
  fr = np.fft.rfftfreq(size)
  kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + fr[None, :] ** 2))
  out = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(size, size)).astype(np.float32)
  std = out.std(axis=(-2, -1), keepdims=True)
  return out / np.maximum(std, 1e-6)


def _double_logistic(doy, start, end, steep):
  return 1.0 / ((1.0 + np.exp(-(doy - start) / steep)) * (1.0 + np.exp((doy - end) / steep)))


class _Voronoi:
  """Nearest seed among jittered grid points, `cell` pixels apart (3x3 neighbour search)."""

  def __init__(self, rng, size, cell):
    self.cell = float(cell)
    self.n = int(np.ceil(size / cell)) + 2  # one cell of margin on each side
    jitter = rng.uniform(-0.45, 0.45, size=(2, self.n, self.n))
    idx = np.arange(self.n, dtype=np.float64) - 1 + 0.5
    self.py = (idx[:, None] + jitter[0]) * self.cell
    self.px = (idx[None, :] + jitter[1]) * self.cell

  @property
  def num_cells(self):
    return self.n * self.n

  def centres(self):
    return self.py.ravel(), self.px.ravel()

  def query(self, y, x):
    ci = np.clip(np.floor(y / self.cell).astype(np.int64) + 1, 1, self.n - 2)
    cj = np.clip(np.floor(x / self.cell).astype(np.int64) + 1, 1, self.n - 2)
    best = np.full(y.shape, np.inf)
    ids = np.zeros(y.shape, np.int64)
    for di in (-1, 0, 1):
      for dj in (-1, 0, 1):
        i, j = ci + di, cj + dj
        d = (y - self.py[i, j]) ** 2 + (x - self.px[i, j]) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        ids = np.where(closer, i * self.n + j, ids)
    return ids


def _blur3(x, sigma, axes):
  """Separable 3-tap Gaussian blur, edges replicated (a sensor point-spread function)."""
  if sigma <= 0:
    return x
  w = np.exp(-0.5 / sigma ** 2)
  w0, w1 = np.float32(w / (1.0 + 2.0 * w)), np.float32(1.0 / (1.0 + 2.0 * w))
  for ax in axes:
    lo = (slice(None),) * ax + (slice(None, -1),)
    hi = (slice(None),) * ax + (slice(1, None),)
    first = (slice(None),) * ax + (0,)
    last = (slice(None),) * ax + (-1,)
    out = x * w1
    out[hi] += w0 * x[lo]
    out[lo] += w0 * x[hi]
    out[first] += w0 * x[first]
    out[last] += w0 * x[last]
    x = out
  return x


def _stable_id(text: str) -> int:
  return zlib.crc32(text.encode("utf-8"))


# --- the class signatures ---------------------------------------------------------------

class _Signatures:
  """Per class: background endmember and endmember-abundance curves over the day of year."""

  def __init__(self, num_classes, seed):
    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable_id("signatures")]))
    self.names, self.background, self.terms = [], [], []
    for k in range(num_classes):
      if k < len(_NAMED_CLASSES):
        name, bg, terms = _NAMED_CLASSES[k]
      else:  # a procedural crop: one or two growing seasons over soil
        name, bg = f"class_{k}", "soil"
        start = rng.uniform(60, 230)
        length = rng.uniform(45, 140)
        seasons = [(rng.uniform(0.55, 0.95), start, start + length, rng.uniform(6, 14))]
        if rng.uniform() < 0.4:
          start2 = start + length + rng.uniform(15, 60)
          seasons.append((rng.uniform(0.3, 0.7), start2, start2 + rng.uniform(40, 90), 8.0))
        veg = _EM_NAMES[rng.choice([1, 2, 3])]  # crop, grass or canopy
        terms = {veg: (rng.uniform(0.0, 0.3), seasons)}
        if rng.uniform() < 0.5:
          end = seasons[-1][2]
          terms["straw" if rng.uniform() < 0.5 else "litter"] = (
              0.0, [(rng.uniform(0.4, 0.8), end, end + rng.uniform(20, 40), 5.0)])
      self.names.append(name)
      self.background.append(_EM_NAMES.index(bg))
      self.terms.append({_EM_NAMES.index(e): t for e, t in terms.items()})
    # Land-use zones: zone z is dominated by class z, mixed with a random share of others.
    self.zone_mix = rng.dirichlet(np.ones(num_classes), size=num_classes)

  def abundances(self, k, doy, amp):
    """Endmember abundances [N, T, E] of class k at days `doy` [N, T], cycle scale `amp` [N]."""
    n, t = doy.shape
    w = np.zeros((n, t, len(_EM_NAMES)), np.float64)
    for e, (const, dls) in self.terms[k].items():
      curve = np.full((n, t), const, np.float64)
      for a, start, end, steep in dls:
        curve += a * _double_logistic(doy, start, end, steep)
      w[..., e] = np.clip(curve * amp[:, None], 0.0, 1.0)
    total = w.sum(-1, keepdims=True)
    w = w / np.maximum(total, 1.0)  # shares never exceed 1
    w[..., self.background[k]] += 1.0 - w.sum(-1)
    return w


class SyntheticLandcover(TileBuilder):
  """Synthetic S2-like land-cover time series: seeded, no input files (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  DEFAULT_PARAMS = DEFAULT_PARAMS
  LABELLED = True
  SENSOR = "synthetic_sentinel2"
  STATS_SPLITS = ("unlabelled", "train")

  # --- parameters ------------------------------------------------------------------------
  def _validate_params(self) -> None:
    p = self.params
    where = f"data.builder ({self.name})"

    def need(key, ok, what):
      if not ok:
        raise ConfigError(f"{where}: '{key}' must be {what}, got {p[key]!r}")

    def is_int(v):
      return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v):
      return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    need("seed", is_int(p["seed"]) and p["seed"] >= 0, "an integer >= 0")
    need("num_classes", is_int(p["num_classes"]) and 2 <= p["num_classes"] <= 254,
         "an integer in [2, 254]")
    need("num_dates", is_int(p["num_dates"]) and 1 <= p["num_dates"] <= 64,
         "an integer in [1, 64]")
    need("tile_size", is_int(p["tile_size"]) and 4 <= p["tile_size"] <= 1024,
         "an integer in [4, 1024]")
    need("scene_size", is_int(p["scene_size"]) and p["scene_size"] >= p["tile_size"]
         and p["scene_size"] % p["tile_size"] == 0 and p["scene_size"] <= 4096,
         f"a multiple of tile_size ({p['tile_size']}), at most 4096")
    bands = p["bands"]
    need("bands", isinstance(bands, list) and bands and all(b in S2_BANDS for b in bands)
         and len(set(bands)) == len(bands), f"a non-empty list of distinct names from {S2_BANDS}")
    need("num_bands", is_int(p["num_bands"]) and 0 <= p["num_bands"] <= len(bands),
         f"an integer in [0, len(bands)={len(bands)}] (0: all of 'bands')")
    tiles = p["num_tiles"]
    need("num_tiles", isinstance(tiles, dict) and tiles
         and all(isinstance(s, str) and s.isidentifier() and is_int(n) and n >= 1
                 for s, n in tiles.items()),
         "a non-empty mapping split name -> number of tiles (>= 1)")
    need("num_tiles", any(s in tiles for s in self.STATS_SPLITS),
         f"a mapping that includes one of {list(self.STATS_SPLITS)} (band statistics)")
    need("year", is_int(p["year"]) and 1900 <= p["year"] <= 2200, "an integer year")
    need("first_doy", is_int(p["first_doy"]) and 1 <= p["first_doy"] <= 365,
         "a day of year in [1, 365]")
    need("last_doy", is_int(p["last_doy"]) and p["first_doy"] <= p["last_doy"] <= 365,
         "a day of year in [first_doy, 365]")
    need("date_jitter_days", is_int(p["date_jitter_days"]) and 0 <= p["date_jitter_days"] <= 60,
         "an integer in [0, 60]")
    need("field_size", is_int(p["field_size"]) and 2 <= p["field_size"] <= p["scene_size"],
         "an integer in [2, scene_size]")
    need("zone_size", is_int(p["zone_size"]) and p["zone_size"] >= p["field_size"],
         "an integer >= field_size")
    need("zone_purity", is_num(p["zone_purity"]) and 0 <= p["zone_purity"] <= 1,
         "a number in [0, 1]")
    for key, hi in (("scene_phase_jitter_days", 90), ("phase_jitter_days", 90),
                    ("amplitude_jitter", 1), ("field_mixing", 0.5), ("brightness_jitter", 0.5),
                    ("spectral_jitter", 0.5), ("texture_std", 1), ("atmosphere_jitter", 0.3),
                    ("noise_std", 5000)):
      need(key, is_num(p[key]) and 0 <= p[key] <= hi, f"a number in [0, {hi}]")
    need("cloud_fraction", is_num(p["cloud_fraction"]) and 0 <= p["cloud_fraction"] < 1,
         "a number in [0, 1)")

  def _bands(self) -> list[str]:
    bands, n = list(self.params["bands"]), self.params["num_bands"]
    if n:
      keep = [b for b in _BAND_PRIORITY if b in bands][:n]
      bands = [b for b in bands if b in keep]
    return bands

  def _signatures(self) -> _Signatures:
    if getattr(self, "_sig_cache", None) is None:
      self._sig_cache = _Signatures(self.params["num_classes"], self.params["seed"])
    return self._sig_cache

  # --- TileBuilder interface -------------------------------------------------------------
  def _split_names(self) -> list[str]:
    return sorted(self.params["num_tiles"])

  def _tile_layout(self) -> dict:
    return {"num_dates": self.params["num_dates"], "tile_size": self.params["tile_size"],
            "bands": self._bands(), "gsd": _GSD, "class_names": self._signatures().names}

  def _extra_metadata(self) -> dict:
    p = self.params
    return {"crs": _CRS, "scene_size": p["scene_size"],
            "labels": "class of the ground on every date; ignore_index where no date sees it; "
                      "'unlabelled' split: ignore_index everywhere"}

  def _tiles(self, split: str) -> Iterator[tuple[str, dict]]:
    p = self.params
    s, size = p["tile_size"], p["scene_size"]
    per_row = size // s
    per_scene = per_row * per_row
    n = p["num_tiles"][split]
    labelled = split != "unlabelled"
    for scene in range((n + per_scene - 1) // per_scene):
      scene_id = f"synthetic-{split}-{scene:05d}"
      g = self.generate_scene(split, scene)
      image, valid, label, dates, (x0, y0) = (g["image"], g["valid"], g["label"], g["dates"],
                                              g["origin"])
      if not labelled:
        label = np.full_like(label, contract.IGNORE_INDEX)
      for t in range(min(per_scene, n - scene * per_scene)):
        r, c = (t // per_row) * s, (t % per_row) * s
        yield f"{scene_id}_{r:05d}_{c:05d}", {
            contract.IMAGE: np.ascontiguousarray(image[:, r:r + s, c:c + s]),
            contract.VALID: np.ascontiguousarray(valid[:, r:r + s, c:c + s]),
            contract.DATES: dates,
            contract.LABEL: np.ascontiguousarray(label[r:r + s, c:c + s]),
            contract.CRS: _CRS,
            contract.TRANSFORM: np.array([x0 + c * _GSD, _GSD, 0.0, y0 - r * _GSD, 0.0, -_GSD],
                                         np.float64),
            contract.SCENE_ID: scene_id,
            contract.ROW: np.int32(r),
            contract.COL: np.int32(c),
        }

  # --- the generator ---------------------------------------------------------------------
  def generate_scene(self, split: str, index: int):
    """One whole scene of `split` (before tiling), a pure function of the parameters,
    `split` and `index`. Returns a dict: image [T,S,S,C] uint16, valid [T,S,S] bool,
    label [S,S] uint8, dates [T] int32, origin (x, y) of the upper-left corner in metres,
    and for diagnostics field_id [S,S] int64 and doy [T] (day of year of each date)."""
    p = self.params
    size, t_n = p["scene_size"], p["num_dates"]
    split_id = _stable_id(split)
    rng = np.random.default_rng(np.random.SeedSequence([p["seed"], split_id, index]))
    sig = self._signatures()
    k_n = p["num_classes"]
    # The whole S2 spectrum is simulated and the bands selected at the end, so a band
    # selection is exactly a view of the full data (same random draws).
    spectra = np.array([_ENDMEMBERS[e] for e in _EM_NAMES], np.float32)    # [E,13]
    cloud = np.array(_CLOUD, np.float32)
    haze = np.array(_HAZE, np.float32)
    nb = len(S2_BANDS)

    # Dates: an even spread over the season, jittered per scene.
    base = np.linspace(p["first_doy"], p["last_doy"], t_n) if t_n > 1 else \
        np.array([(p["first_doy"] + p["last_doy"]) / 2.0])
    jit = p["date_jitter_days"]
    doy = np.round(base).astype(np.int64) + rng.integers(-jit, jit + 1, size=t_n)
    doy = np.clip(np.sort(doy), 1, 365)
    jan1 = datetime.date(p["year"], 1, 1)
    dates = np.array([int((jan1 + datetime.timedelta(days=int(d) - 1)).strftime("%Y%m%d"))
                      for d in doy], np.int32)

    # Fields on warped coordinates; zones from the coarser tessellation at field centres.
    fs = p["field_size"]
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float64) + 0.5,
                         np.arange(size, dtype=np.float64) + 0.5, indexing="ij")
    warp = _smooth_noise(rng, (2,), size, sigma=fs * 0.75) * (0.3 * fs)
    fields = _Voronoi(rng, size, fs)
    field_id = fields.query(yy + warp[0], xx + warp[1])                    # [S,S]
    zones = _Voronoi(rng, size, p["zone_size"])
    zone_class = rng.integers(0, k_n, size=zones.num_cells)               # dominant class
    field_zone = zone_class[zones.query(*fields.centres())]
    prior = (p["zone_purity"] * np.eye(k_n)[field_zone] +
             (1.0 - p["zone_purity"]) * sig.zone_mix[field_zone])          # [F,K]
    u = rng.uniform(size=(fields.num_cells, 1))
    field_class = np.minimum((u > np.cumsum(prior, axis=1)).sum(axis=1), k_n - 1)

    # Per-field variation, then abundances per field and date.
    nf = fields.num_cells
    phase = rng.normal(0.0, p["phase_jitter_days"], size=nf) + \
        rng.normal(0.0, p["scene_phase_jitter_days"])
    amp = np.clip(rng.normal(1.0, p["amplitude_jitter"], size=nf), 0.3, 1.7)
    bright = np.clip(rng.normal(1.0, p["brightness_jitter"], size=nf), 0.5, 1.5)
    colour = np.clip(rng.normal(1.0, p["spectral_jitter"], size=(nf, nb)), 0.5, 1.5)
    other = (field_class + rng.integers(1, k_n, size=nf)) % k_n           # never the own class
    share = rng.uniform(0.0, p["field_mixing"], size=nf)
    field_doy = doy[None, :] - phase[:, None]
    abund = np.zeros((nf, t_n, len(_EM_NAMES)), np.float64)
    mixed = np.zeros_like(abund)
    for k in range(k_n):  # own class, and a share of another (intercrop, weeds, margins)
      m = field_class == k
      if m.any():
        abund[m] = sig.abundances(k, field_doy[m], amp[m])
      m = other == k
      if m.any():
        mixed[m] = sig.abundances(k, field_doy[m], amp[m])
    abund = (1.0 - share[:, None, None]) * abund + share[:, None, None] * mixed

    # Pixels. Within-field texture scales the non-background abundances by c = 1 + tex
    # (renormalised where they would pass 1): w = m * fg + (1 - m * sum(fg)) * onehot(bg)
    # with m = min(c, 1 / sum(fg)), so reflectance = B + m * (F - sum(fg) * B), where
    # F = fg @ spectra and B the background spectrum, both per field: one gather per pixel.
    tex = _smooth_noise(rng, (2,), size, sigma=1.5) * p["texture_std"]
    background = np.array(sig.background)[field_class]                    # [F]
    onehot = np.arange(len(_EM_NAMES)) == background[:, None]              # [F,E]
    fg = np.where(onehot[:, None, :], 0.0, abund)                          # [F,T,E]
    fg_sum = fg.sum(-1)                                                    # [F,T]
    bg_spec = spectra[background].astype(np.float64)                       # [F,13]
    delta = (fg @ spectra - fg_sum[..., None] * bg_spec[:, None, :])       # [F,T,13]
    c = np.clip(1.0 + tex[0], 0.2, 2.0)                                    # [S,S]
    m = np.minimum(c[None], 1.0 / np.maximum(fg_sum.T[:, field_id], 1e-6))  # [T,S,S]
    refl = (bg_spec.astype(np.float32)[field_id][None] +
            m.astype(np.float32)[..., None] *
            delta.astype(np.float32).transpose(1, 0, 2)[:, field_id])      # [T,S,S,13]
    scale = (bright[:, None] * colour).astype(np.float32)[field_id]        # [S,S,13]
    refl *= scale * np.clip(1.0 + 0.5 * tex[1], 0.5, 1.5)[:, :, None]
    refl = _blur3(refl, 0.6, axes=(1, 2))

    # Atmosphere per date.
    gain = rng.normal(1.0, p["atmosphere_jitter"], size=t_n).astype(np.float32)
    hz = rng.uniform(0.0, 10.0 * p["atmosphere_jitter"], size=t_n).astype(np.float32) * 1000
    refl = refl * gain[:, None, None, None] + hz[:, None, None, None] * haze

    # Clouds and shadows per date.
    valid = np.ones((t_n, size, size), bool)
    cover = np.minimum(rng.exponential(p["cloud_fraction"], size=t_n), 0.9) \
        if p["cloud_fraction"] > 0 else np.zeros(t_n)
    field = _smooth_noise(rng, (t_n,), size, sigma=max(size / 24.0, 2.0)) + \
        0.35 * _smooth_noise(rng, (t_n,), size, sigma=1.5)
    thick = 0.8 + 0.2 * _smooth_noise(rng, (t_n,), size, sigma=4.0)
    shift = rng.integers(3, 9, size=(t_n, 2))
    for t in range(t_n):
      if cover[t] < 1e-3:
        continue
      thr = np.quantile(field[t], 1.0 - cover[t])
      alpha = np.clip((field[t] - thr) / 0.4 + 0.1, 0.0, 1.0)             # soft edges
      alpha[field[t] < thr - 0.04] = 0.0
      shadow = np.roll(alpha, tuple(shift[t]), axis=(0, 1))
      shadow = np.where(alpha > 0.05, 0.0, shadow)
      refl[t] *= (1.0 - 0.55 * shadow)[:, :, None]
      a = alpha[:, :, None]
      refl[t] = (1.0 - a) * refl[t] + a * cloud * np.clip(thick[t], 0.5, 1.2)[:, :, None]
      valid[t] = (alpha < 0.2) & (shadow < 0.3)

    # Sensor noise.
    refl += np.float32(p["noise_std"]) * rng.standard_normal(size=refl.shape, dtype=np.float32)
    band_idx = [S2_BANDS.index(b) for b in self._bands()]
    image = np.clip(np.rint(refl[..., band_idx]), 0, _MAX_DN).astype(np.uint16)

    label = field_class[field_id].astype(np.uint8)
    label[~valid.any(axis=0)] = contract.IGNORE_INDEX

    extent = size * _GSD * 1.25
    x0 = 200000.0 + (index % 40) * extent
    y0 = 1000000.0 + (split_id % 97) * 40 * extent + (index // 40) * extent
    return {"image": image, "valid": valid, "label": label, "dates": dates, "origin": (x0, y0),
            "field_id": field_id, "doy": doy}
