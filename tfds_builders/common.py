"""What every tile builder shares: parameters, feature spec, metadata, statistics.

A subclass sets `DEFAULT_PARAMS`, `LABELLED`, and implements `_split_names()`,
`_tile_layout()` and `_tiles(split)`; this base class turns those into the tile contract of
`ee_jax.data.contract`, accumulates per-band statistics over the train split (and class
pixel counts per split for labelled data), and stores them in the dataset's metadata.
TFDS writes into a temporary directory and renames it only on success, so an interrupted
or failed build never leaves a dataset that looks complete.

A builder that also implements `_beam_units()`, `_unit_tiles()` (and `_describe_unit()`)
builds as an Apache Beam pipeline when the DownloadConfig names a runner or options
(tfds_builders/beam_tiles.py); without them it builds as before, in this process.
"""

import copy
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.data.stats import BandStats
from ee_jax.errors import ConfigError, DataError


def _plain(value):
  """ConfigDicts / tuples -> plain JSON-able Python (for metadata and comparisons)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def merge_params(defaults: Mapping[str, Any], given: Mapping[str, Any] | None,
                 where: str) -> dict:
  """Defaults overridden by `given`; an unknown key is an error naming it."""
  params = copy.deepcopy(_plain(defaults))
  for key, value in (_plain(given) or {}).items():
    if key not in params:
      raise ConfigError(f"{where}: unknown key '{key}'; known keys: {sorted(params)}")
    params[key] = value
  return params


class TileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the tile builders (not registered itself)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  DEFAULT_PARAMS: Mapping[str, Any] = {}
  LABELLED = False
  SENSOR = "sentinel2"
  STATS_SPLITS = ("train",)  # splits whose valid pixels give the per-band mean and std

  def __init__(self, *, params: Mapping[str, Any] | None = None, **kwargs):
    self.params = merge_params(self.DEFAULT_PARAMS, params, f"data.builder ({self.name})")
    self._validate_params()
    super().__init__(**kwargs)

  # --- to implement -------------------------------------------------------------------
  def _validate_params(self) -> None:
    """Raise ConfigError for a parameter value that cannot work."""

  def _split_names(self) -> list[str]:
    raise NotImplementedError

  def _tile_layout(self) -> dict:
    """Returns {'num_dates', 'tile_size', 'bands', 'gsd'} (+ 'class_names' if labelled)."""
    raise NotImplementedError

  def _tiles(self, split: str) -> Iterator[tuple[str, dict]]:
    """Yields (unique key, example dict in the tile contract) for `split`."""
    raise NotImplementedError

  def _extra_metadata(self) -> dict:
    """Anything else to record (product ids, offsets removed, ...); called after building."""
    return {}

  # --- to implement for Beam builds (tfds_builders/beam_tiles.py) ----------------------
  def _beam_units(self) -> list:
    """The work units, each small and picklable (a product, scene, row group, location)."""
    raise ConfigError(f"data.beam_runner: {self.name} does not build on Beam yet; "
                      f"leave data.beam_runner empty")

  def _beam_context(self) -> dict:
    """What `_unit_tiles` needs besides the params, computed once here (picklable)."""
    return {}

  @classmethod
  def _unit_tiles(cls, params, context, unit, splits, summary):
    """Yields (split, key, example) for every tile of `unit` in `splits`, reading the
    unit once; counts its scenes into `summary` (an archives.Summary). Runs on a worker."""
    raise NotImplementedError

  @classmethod
  def _describe_unit(cls, unit) -> str:
    return repr(unit)[:300]

  # --- TFDS plumbing --------------------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    layout = self._tile_layout()
    metadata = tfds.core.MetadataDict()
    metadata[contract.META_PARAMS] = self.params
    metadata[contract.META_BANDS] = list(layout["bands"])
    metadata[contract.META_GSD] = layout["gsd"]
    metadata[contract.META_SENSOR] = self.SENSOR
    metadata[contract.META_NUM_DATES] = layout["num_dates"]
    metadata[contract.META_TILE_SIZE] = layout["tile_size"]
    if self.LABELLED:
      metadata[contract.META_CLASS_NAMES] = list(layout["class_names"])
      metadata[contract.META_IGNORE_INDEX] = contract.IGNORE_INDEX
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=contract.tile_features(layout["num_dates"], layout["tile_size"],
                                        len(layout["bands"]), self.LABELLED),
        metadata=metadata,
    )

  def _download_and_prepare(self, dl_manager, download_config):  # pylint: disable=arguments-differ
    self._beam = bool(download_config.beam_runner or download_config.beam_options)
    if not self._beam:
      super()._download_and_prepare(dl_manager, download_config)
      return
    from tfds_builders import beam_tiles  # pylint: disable=import-outside-toplevel
    try:
      super()._download_and_prepare(dl_manager, download_config)
    except Exception as e:  # pylint: disable=broad-except  (the runner's wrapping varies)
      error = beam_tiles.explain_failure(self, e)
      if error is None:
        raise
      raise error from e
    beam_tiles.record_results(self)

  def _process_pipeline_result(self, pipeline_result):
    """TFDS's hook after a Beam pipeline: its writer's counters, for the lost-tiles check."""
    from tfds_builders import beam_tiles  # pylint: disable=import-outside-toplevel
    self._beam_counters = beam_tiles.writer_counters(pipeline_result)

  def _split_generators(self, dl_manager):
    del dl_manager
    if getattr(self, "_beam", False):
      from tfds_builders import beam_tiles  # pylint: disable=import-outside-toplevel
      # units listed here: a builder without them says so before a pipeline starts
      return beam_tiles.split_transforms(self, self._beam_units())
    self._stats = BandStats(len(self._tile_layout()["bands"]))
    self._class_counts = {}
    self._split_counts = {}
    return {split: self._generate_examples(split) for split in self._split_names()}

  def _generate_examples(self, split):
    num_classes = len(self._tile_layout().get("class_names", []))
    counts = np.zeros(num_classes, np.int64)
    n = 0
    for key, example in self._tiles(split):
      n += 1
      if split in self.STATS_SPLITS:
        image, valid = example[contract.IMAGE], example[contract.VALID]
        self._stats.update(image[valid])  # [T,H,W,C][T,H,W] -> [N, C]
      if self.LABELLED:
        label = example[contract.LABEL]
        counts += np.bincount(label[label != contract.IGNORE_INDEX],
                              minlength=num_classes)[:num_classes]
      yield key, example
    self._split_counts[split] = n
    if self.LABELLED:
      self._class_counts[split] = counts.tolist()
    if n == 0:
      raise DataError(self.no_tiles_message(split))
    self.record_metadata(self._stats, self._class_counts)

  def no_tiles_message(self, split: str) -> str:
    return (f"{self.name}: no valid tiles in the {split} split "
            f"({self._describe_sources()}); check nodata and cloud masks, "
            f"max_invalid={self.params.get('max_invalid')}, and for small scenes "
            f"block_tiles and split_fractions")

  def record_metadata(self, stats: BandStats, class_counts: dict) -> None:
    """Statistics, class counts and the builder's extras into the metadata (plain build:
    after each split; Beam: once, from the results combined across workers)."""
    if stats.count:
      self.info.metadata[contract.META_MEAN] = stats.mean.tolist()
      self.info.metadata[contract.META_STD] = stats.std.tolist()
      self.info.metadata["stats_pixels"] = int(stats.count)
    if self.LABELLED:
      self.info.metadata["class_pixel_counts"] = dict(class_counts)
    self.info.metadata.update(self._extra_metadata())

  def _describe_sources(self) -> str:
    return "see the builder parameters"
