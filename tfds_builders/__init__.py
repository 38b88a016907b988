"""TFDS dataset builders, one folder per dataset; all emit the tile contract."""
