"""Backbones by name (`config.model.backbone`): one module each in ee_jax/models/.

A backbone module names itself (`NAME`) and builds its module from the model config
(`from_config(cfg, **common)`, `common` being the fields every UNetBase shares). The
registry is every module of this package that defines both, so adding a backbone is its
module plus its name in a config.
"""

import importlib
import pkgutil

from ee_jax.errors import ConfigError
from ee_jax.models import temporal_attention, unet, unet3d


def _discover() -> dict:
  """{NAME: from_config} of the modules of ee_jax.models that define both."""
  package = importlib.import_module("ee_jax.models")
  found = {}
  for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
    module = importlib.import_module(f"ee_jax.models.{info.name}")
    if isinstance(getattr(module, "NAME", None), str) and callable(
        getattr(module, "from_config", None)):
      found[module.NAME] = module.from_config
  return found


BACKBONES = _discover()

# Before `config.model.backbone`, `config.model.temporal` named these backbones too; model
# configs in older checkpoints' metadata still do (and have no `backbone`).
LEGACY_TEMPORAL = {"conv3d": unet3d.NAME, "attention": temporal_attention.NAME}


def backbone_name(cfg) -> str:
  """The backbone a model config (ConfigDict or dict) names, older ones included:
  `temporal='conv3d'` / `'attention'` with no `backbone` (or the default 'unet') mean
  'unet3d' / 'temporal_attention'."""
  name = cfg.get("backbone") or unet.NAME
  legacy = LEGACY_TEMPORAL.get(cfg.get("temporal", "stack"))
  if legacy is None:
    return name
  if name not in (unet.NAME, legacy):
    raise ConfigError(f"config.model.temporal='{cfg.get('temporal')}' names the backbone "
                      f"'{legacy}' but config.model.backbone='{name}'; set "
                      f"config.model.backbone='{legacy}' and temporal to 'stack' or 'shared'")
  return legacy


def stacks_dates(cfg) -> bool:
  """Whether the model's input has a fixed number of dates (the UNet stacking them into
  channels), rather than taking any T."""
  return backbone_name(cfg) == unet.NAME and cfg.get("temporal", "stack") == "stack"


def build(cfg, **common):
  """The backbone module `cfg` names, built from `cfg` and the shared fields `common`."""
  name = backbone_name(cfg)
  if name not in BACKBONES:
    raise ConfigError(f"config.model.backbone: unknown '{name}'; known: {sorted(BACKBONES)}")
  return BACKBONES[name](cfg, **common)
