"""What every tile builder shares: parameters, feature spec, metadata, statistics.

A subclass sets `DEFAULT_PARAMS`, `LABELLED`, and implements `_split_names()`,
`_tile_layout()` and `_tiles(split)`; this base class turns those into the tile contract of
`ee_jax.data.contract`, accumulates per-band statistics over the train split (and class
pixel counts per split for labelled data), and stores them in the dataset's metadata.
TFDS writes into a temporary directory and renames it only on success, so an interrupted
or failed build never leaves a dataset that looks complete.
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

  def _split_generators(self, dl_manager):
    del dl_manager
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
      raise DataError(f"{self.name}: no valid tiles in the {split} split "
                      f"({self._describe_sources()}); check nodata and cloud masks, "
                      f"max_invalid={self.params.get('max_invalid')}, and for small scenes "
                      f"block_tiles and split_fractions")
    if self._stats.count:
      self.info.metadata[contract.META_MEAN] = self._stats.mean.tolist()
      self.info.metadata[contract.META_STD] = self._stats.std.tolist()
      self.info.metadata["stats_pixels"] = int(self._stats.count)
    if self.LABELLED:
      self.info.metadata["class_pixel_counts"] = dict(self._class_counts)
    self.info.metadata.update(self._extra_metadata())

  def _describe_sources(self) -> str:
    return "see the builder parameters"
