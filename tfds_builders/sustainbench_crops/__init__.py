"""Ghana and South Sudan crop types (Rustowicz et al. 2019), in the SustainBench layout."""

from tfds_builders.sustainbench_crops.builder import CLASS_NAMES, SustainbenchCrops

__all__ = ["CLASS_NAMES", "SustainbenchCrops"]
