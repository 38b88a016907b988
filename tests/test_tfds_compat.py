"""ee_jax/data/tfds_compat.py patches private TFDS names: these tests fail with a line naming
each one that moved, and check that setup.cfg keeps TFDS below the next minor release."""

import configparser
import os

import pytest
from packaging.requirements import Requirement
from packaging.version import Version
from tensorflow_datasets.core import dataset_builder, shuffle

from ee_jax.data import tfds_compat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_private_tfds_names_tfds_compat_patches_are_there():
  problems = tfds_compat.private_api_problems()
  assert not problems, "\n".join(problems)


def test_a_moved_private_name_is_named(monkeypatch):
  monkeypatch.delattr(shuffle._Bucket, "del_file")  # pylint: disable=protected-access
  monkeypatch.setattr(shuffle._Bucket, "add",  # pylint: disable=protected-access
                      lambda self, key, data, sync: None)
  monkeypatch.delattr(dataset_builder.DatasetBuilder, "_log_download_done")
  monkeypatch.delattr(shuffle, "MAX_MEM_BUFFER_SIZE")
  problems = tfds_compat.private_api_problems()
  assert len(problems) == 4, problems
  assert all(p.startswith("ee_jax/data/tfds_compat.py relies on tensorflow_datasets.core.")
             for p in problems)
  text = "\n".join(problems)
  assert "shuffle._Bucket.del_file: it is gone" in text
  assert "shuffle._Bucket.add(self, key, data): it takes (self, key, data, sync)" in text
  assert "DatasetBuilder._log_download_done: it is gone" in text
  assert "shuffle.MAX_MEM_BUFFER_SIZE: it is gone" in text


def test_setup_cfg_bounds_tensorflow_datasets_and_the_installed_one_is_inside():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  reqs = [Requirement(line) for line in cfg["options"]["install_requires"].splitlines()
          if line.strip() and not line.strip().startswith("#")]
  (tfds_req,) = [r for r in reqs if r.name == "tensorflow-datasets"]
  assert any(s.operator == "<" for s in tfds_req.specifier), tfds_req
  assert Version(tfds_compat.tfds_version()) in tfds_req.specifier


@pytest.mark.parametrize("name", ["_Bucket", "Shuffler"])
def test_a_missing_class_is_named_not_an_attribute_error(monkeypatch, name):
  monkeypatch.delattr(shuffle, name)
  assert any(f"shuffle.{name}: it is gone" in p for p in tfds_compat.private_api_problems())
