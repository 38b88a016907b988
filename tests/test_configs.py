"""Every config loads (with and without its argument) and names only keys that exist."""

import glob
import importlib
import os

import pytest

from ee_jax.data import datasets
from ee_jax.inference.config import Options
from tfds_builders.common import merge_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not os.path.basename(p).startswith(("_", "defaults")))


def test_there_are_configs():
  assert "pretrain_s2" in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("arg", [None, "smoke", "demo"])
def test_config_loads_and_resolves(name, arg):
  module = importlib.import_module(f"configs.{name}")
  try:
    config = module.get_config(arg)
  except ValueError as e:
    assert arg == "demo" and "unknown argument" in str(e)  # not every config has :demo
    return
  config.lock()
  cls = datasets.builder_class(config.data.name)
  # Builder parameters are all known to the builder.
  merge_params(cls.DEFAULT_PARAMS, config.data.builder, f"configs/{name}.py")
  assert config.data.per_device_batch > 0
  # Every config carries the scene-inference options, and they resolve as they are.
  assert "inference" in config
  assert Options.resolve(config, {}).tile_size > 0


@pytest.mark.parametrize("name", CONFIGS)
def test_config_rejects_unknown_argument(name):
  module = importlib.import_module(f"configs.{name}")
  with pytest.raises(ValueError, match="unknown argument"):
    module.get_config("no_such_variant")


def test_parse_arg_names_the_argument_and_the_known_ones():
  from configs import defaults
  assert defaults.parse_arg(None, ("smoke",), "configs/x.py") is None
  assert defaults.parse_arg("", ("smoke",), "configs/x.py") is None  # `configs/x.py:`
  assert defaults.parse_arg("smoke", ("smoke", "demo"), "configs/x.py") == "smoke"
  with pytest.raises(ValueError) as e:
    defaults.parse_arg("bogus", ("smoke", "demo"), "configs/x.py")
  assert str(e.value) == "configs/x.py: unknown argument 'bogus' (known: smoke, demo)"
  folder = (str.isdigit, "a number")
  assert defaults.parse_arg("7", ("smoke",), "configs/x.py", also=folder) == "7"
  with pytest.raises(ValueError, match=r"\(known: smoke, a number\)$"):
    defaults.parse_arg("x", ("smoke",), "configs/x.py", also=folder)


@pytest.mark.parametrize("name", [n for n in CONFIGS if n.startswith("study_")])
def test_every_study_builds_the_same_study_section(name):
  """configs/defaults.add_study: one set of keys (pretrain_data only where the pre-training
  reads other imagery), whatever the dataset."""
  from configs import study_synthetic
  want = set(study_synthetic.get_config("smoke").study) | {"pretrain_data"}
  study = importlib.import_module(f"configs.{name}").get_config("smoke").study
  assert set(study) <= want and want - set(study) <= {"pretrain_data"}
  assert study.seeds == (0,) and len(study.fractions) == 2


def test_default_study_is_the_narrow_one_on_the_wide_pre_training_with_shorter_runs():
  """study_synthetic (default) against :narrow (the study shipped before): only which
  pre-training runs (pretrain_synthetic:wide: twice the full-resolution width, 3000 steps
  instead of 4000) and 200 fine-tuning steps instead of 300; the runs take the
  pre-training's architecture."""
  from configs import study_synthetic
  from ee_jax.study import pretrain_config_for
  default, narrow = study_synthetic.get_config(), study_synthetic.get_config("narrow")
  assert default.study.pretrain_arg == "wide" and narrow.study.pretrain_arg == ""
  assert (default.train.steps, narrow.train.steps) == (200, 300)
  default.study.pretrain_arg, default.train.steps = "", 300
  assert default.to_dict() == narrow.to_dict()
  default.study.pretrain_arg = "wide"
  shipped, wider = pretrain_config_for(narrow), pretrain_config_for(default)
  assert wider.model.widths[0] == 2 * shipped.model.widths[0]
  assert wider.model.widths[1:] == shipped.model.widths[1:]
  assert (wider.train.steps, shipped.train.steps) == (3000, 4000)
  wider.model.widths, wider.train.steps = shipped.model.widths, shipped.train.steps
  assert wider.to_dict() == shipped.to_dict()
