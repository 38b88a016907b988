"""Config -> dataset: build a dataset once, open it read-only, summarise it.

`config.data` holds `name` (builder), `config_name` (the dataset's config directory),
`data_dir`, and `builder` (the builder's parameters). Reading needs no builder code:
`tfds.builder_from_directory` restores features and metadata from the dataset folder.
"""

import importlib
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ee_jax.data import beam_config, contract, tfds_compat
from ee_jax.errors import ConfigError, DataError

# Dataset name -> "module:Class". Imported lazily so reading never imports builder code.
BUILDERS = {
    "s2_tiles": "tfds_builders.s2_tiles:S2Tiles",
    "landcover_tiles": "tfds_builders.landcover_tiles:LandcoverTiles",
    "synthetic_landcover": "tfds_builders.synthetic_landcover:SyntheticLandcover",
    # The paper's benchmarks, read from their downloaded folders (params.manual_dir).
    "pastis": "tfds_builders.pastis:Pastis",
    "sustainbench_crops": "tfds_builders.sustainbench_crops:SustainbenchCrops",
    "t31tfm": "tfds_builders.t31tfm:T31tfm",
    "mtlcc": "tfds_builders.mtlcc:Mtlcc",
}


def builder_class(name: str):
  if name not in BUILDERS:
    raise ConfigError(f"config.data.name: unknown dataset '{name}'; known: {sorted(BUILDERS)}")
  module, cls = BUILDERS[name].split(":")
  return getattr(importlib.import_module(module), cls)


def data_dir(data_cfg) -> str:
  """`config.data.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  d = data_cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  if "://" in d:   # a bucket (gs://, s3://): where a cloud runner's workers write the shards
    return d
  return os.path.abspath(os.path.expanduser(d))


def make_builder(data_cfg) -> tfds.core.DatasetBuilder:
  """The (writable) builder for `config.data`; building it is a separate step."""
  cls = builder_class(data_cfg.name)
  params = data_cfg.get("builder")
  config = data_cfg.config_name
  if config not in getattr(cls, "builder_configs", {}):
    config = tfds.core.BuilderConfig(name=config, description=f"{data_cfg.name} from a config")
  return cls(params=params, config=config, data_dir=data_dir(data_cfg),
             file_format="array_record")


def dataset_path(data_cfg) -> epath.Path:
  cls = builder_class(data_cfg.name)
  return (epath.Path(data_dir(data_cfg)) / cls.name / data_cfg.config_name /
          str(cls.VERSION))


def is_prepared(data_cfg) -> bool:
  return (dataset_path(data_cfg) / "dataset_info.json").exists()


def _check_params_match(data_cfg, prepared) -> None:
  """A prepared dataset built with other parameters must not be silently reused."""
  builder = make_builder(data_cfg)  # validates the requested parameters
  stored = prepared.info.metadata.get(contract.META_PARAMS, {})
  wanted = builder.params
  diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
  if diff:
    detail = "; ".join(f"{k}: built {stored.get(k)!r}, config {wanted.get(k)!r}" for k in diff)
    raise DataError(
        f"{dataset_path(data_cfg)} was built with other parameters ({detail}). Use another "
        f"config.data.config_name or config.data.data_dir, or delete that folder.")


def _download_config(data_cfg) -> tfds.download.DownloadConfig:
  """The plain build, or with `data.beam_runner` a Beam pipeline (ee_jax/data/beam_config.py)."""
  flags = beam_config.flags(data_cfg)
  if flags is None:
    return tfds.download.DownloadConfig(try_download_gcs=False)
  return tfds.download.DownloadConfig(try_download_gcs=False,
                                      beam_options=beam_config.pipeline_options(flags))


def prepare(data_cfg, log=print) -> tfds.core.DatasetBuilder:
  """Builds the dataset unless it is already complete; returns it opened read-only."""
  download_config = _download_config(data_cfg)   # a bad runner or option: before any work
  if is_prepared(data_cfg):
    prepared = open_prepared(data_cfg)
    _check_params_match(data_cfg, prepared)
    log(f"Dataset already prepared: {dataset_path(data_cfg)}")
    return prepared
  builder = make_builder(data_cfg)
  tfds_compat.install()
  on = f" on Beam ({data_cfg.beam_runner})" if download_config.beam_options else ""
  log(f"Building {data_cfg.name}/{data_cfg.config_name} into {dataset_path(data_cfg)}{on} ...")
  builder.download_and_prepare(file_format="array_record", download_config=download_config)
  return open_prepared(data_cfg)


def open_prepared(data_cfg) -> tfds.core.DatasetBuilder:
  path = dataset_path(data_cfg)
  if not (path / "dataset_info.json").exists():
    raise DataError(f"{path}: no prepared dataset here; build it first with "
                    f"`python launch.py --mode=build --config=...`")
  return tfds.builder_from_directory(os.fspath(path))


def summary(builder: tfds.core.DatasetBuilder) -> str:
  """A human-readable summary: splits and counts, bands, statistics."""
  info = builder.info
  meta = info.metadata
  lines = [f"Dataset {info.name} at {builder.data_dir}"]
  for name, split in sorted(info.splits.items()):
    lines.append(f"  split {name:<11} {split.num_examples:>7} tiles")
  lines.append(f"  sensor {meta.get(contract.META_SENSOR)}, GSD {meta.get(contract.META_GSD)}, "
               f"dates per tile {meta.get(contract.META_NUM_DATES)}, "
               f"tile size {meta.get(contract.META_TILE_SIZE)}")
  bands = meta.get(contract.META_BANDS, [])
  mean = meta.get(contract.META_MEAN, [np.nan] * len(bands))
  std = meta.get(contract.META_STD, [np.nan] * len(bands))
  lines.append("  band      mean       std   (train split, digital numbers)")
  for b, m, s in zip(bands, mean, std):
    lines.append(f"  {b:<5} {m:>9.1f} {s:>9.1f}")
  if contract.META_CLASS_NAMES in meta:
    counts = meta.get("class_pixel_counts", {})
    lines.append("  classes: " + ", ".join(meta[contract.META_CLASS_NAMES]))
    for split, c in sorted(counts.items()):
      lines.append(f"  class pixels in {split}: {c}")
  for key in ("product_ids", "offsets_removed", "archive"):
    if key in meta:
      lines.append(f"  {key}: {meta[key]}")
  return "\n".join(lines)
