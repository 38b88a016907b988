"""PASTIS (Garnot & Landrieu 2021): Sentinel-2 time series of French parcels, 5 folds."""

from tfds_builders.pastis.builder import CLASS_NAMES, FOLDS, Pastis

__all__ = ["CLASS_NAMES", "FOLDS", "Pastis"]
