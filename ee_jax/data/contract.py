"""The tile example contract every builder emits (docs/design.md, "Tile example contract").

Keeping the feature spec in one place means builders, the input pipeline and scene
inference can never disagree about keys, dtypes or shapes.

Large arrays are stored with `Encoding.BYTES` (raw bytes, no protobuf int lists): it
decodes about 2x faster through `tfds.data_source` and builds about 6x faster.
"""

import numpy as np
import tensorflow_datasets as tfds

IGNORE_INDEX = 255

# Keys of an example.
IMAGE = "image"          # uint16 [T, H, W, C] raw digital numbers
VALID = "valid"          # bool   [T, H, W]    pixel observed (not nodata, not cloud)
DATES = "dates"          # int32  [T]          YYYYMMDD, 0 where unknown
LABEL = "label"          # uint8  [H, W]       labelled datasets only
CRS = "crs"              # string              CRS of the tile (e.g. "EPSG:32618" or WKT)
TRANSFORM = "transform"  # float64 [6]         affine of the tile, GDAL order
SCENE_ID = "scene_id"    # string
ROW = "row"              # int32  pixel row of the tile's top-left corner in its scene grid
COL = "col"              # int32  pixel column of the tile's top-left corner

# Dataset-level metadata keys (stored in DatasetInfo.metadata -> metadata.json).
META_BANDS = "bands"
META_GSD = "gsd"
META_MEAN = "mean"
META_STD = "std"
META_SENSOR = "sensor"
META_CLASS_NAMES = "class_names"
META_IGNORE_INDEX = "ignore_index"
META_NUM_DATES = "num_dates"
META_TILE_SIZE = "tile_size"
META_PARAMS = "build_params"  # the builder parameters the dataset was built with

_BYTES = tfds.features.Encoding.BYTES


def tile_features(num_dates: int, tile_size: int, num_bands: int,
                  labelled: bool) -> tfds.features.FeaturesDict:
  """Feature spec of one tile: static shapes, so every example has the same layout."""
  t, s = num_dates, tile_size
  spec = {
      IMAGE: tfds.features.Tensor(shape=(t, s, s, num_bands), dtype=np.uint16, encoding=_BYTES),
      VALID: tfds.features.Tensor(shape=(t, s, s), dtype=np.bool_, encoding=_BYTES),
      DATES: tfds.features.Tensor(shape=(t,), dtype=np.int32),
      CRS: tfds.features.Text(),
      TRANSFORM: tfds.features.Tensor(shape=(6,), dtype=np.float64),
      SCENE_ID: tfds.features.Text(),
      ROW: tfds.features.Scalar(dtype=np.int32),
      COL: tfds.features.Scalar(dtype=np.int32),
  }
  if labelled:
    spec[LABEL] = tfds.features.Tensor(shape=(s, s), dtype=np.uint8, encoding=_BYTES)
  return tfds.features.FeaturesDict(spec)


def as_text(value) -> str:
  """`tfds.data_source` returns Text features as bytes; give them back as str."""
  return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)
