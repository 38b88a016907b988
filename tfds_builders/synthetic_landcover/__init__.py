"""`synthetic_landcover`: a generated, seeded land-cover time-series dataset (no input files)."""

from tfds_builders.synthetic_landcover.builder import DEFAULT_PARAMS, SyntheticLandcover

__all__ = ["DEFAULT_PARAMS", "SyntheticLandcover"]
