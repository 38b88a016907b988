"""T31TFM_1618 (the authors' France data, DeepSatData pickles), read through a safe unpickler."""

from tfds_builders.t31tfm.builder import T31tfm
from tfds_builders.t31tfm.safe_pickle import load_arrays

__all__ = ["T31tfm", "load_arrays"]
