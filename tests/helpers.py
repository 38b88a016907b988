"""Plain helpers shared by several test modules (test modules never import one another).

Fixtures live in tests/conftest.py; rasters written for the builders in tests/rasters.py.
"""

import pathlib

import ml_collections

from ee_jax.geo.bands import S2_L2A_BANDS

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# ---------------------------------------------------------------------------------------
# Dataset configs for builds on small rasters written by the tests.
# ---------------------------------------------------------------------------------------

BANDS = list(S2_L2A_BANDS)


def data_cfg(tmp_path, name="s2_tiles", config_name="t", **builder):
  """`config.data` of a build under tmp_path/tfds with builder parameters `builder`."""
  return ml_collections.ConfigDict(dict(
      name=name, config_name=config_name, data_dir=str(tmp_path / "tfds"),
      builder=ml_collections.ConfigDict(builder)))


def s2_cfg(tmp_path, products, **kw):
  """An s2_tiles build of `products` (folders or GeoTIFFs) in 32 px tiles, one a block."""
  params = dict(source="manual", products=products, bands=BANDS, tile_size=32, stride=32,
                block_tiles=1)
  params.update(kw)
  return data_cfg(tmp_path, **params)
