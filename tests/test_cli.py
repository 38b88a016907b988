"""The console entry point (`ee-jax`, ee_jax.cli:main): configs by path or by shipped name,
one line for an unknown one; and (slow) the wheel carries configs, the entry point and the
licence."""

import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from ee_jax import config_files
from ee_jax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _console(cwd, *args):
  """The console script's own call (`ee_jax.cli:main`), from `cwd`."""
  script = "import sys; from ee_jax.cli import main; sys.argv[0] = 'ee-jax'; main()"
  return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                        cwd=cwd, env=dict(os.environ, PYTHONPATH=REPO), check=False)


def test_the_console_script_is_declared_as_ee_jax_cli_main():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"))
  assert cfg["options.entry_points"]["console_scripts"].split() == ["ee-jax", "=",
                                                                    "ee_jax.cli:main"]
  assert "configs" in cfg["options.packages.find"]["include"].split()


@pytest.mark.parametrize("spec", ["study_synthetic:smoke", "study_synthetic.py:smoke",
                                  "configs/study_synthetic.py:smoke"])
def test_shipped_names_resolve_from_any_directory(tmp_path, monkeypatch, spec):
  monkeypatch.chdir(tmp_path)   # no configs/ here: the shipped file is found instead
  assert config_files.resolve(spec) == os.path.join(REPO, "configs", "study_synthetic.py") + \
      ":smoke"


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "study_synthetic.py").write_text("def get_config(arg=None): ...\n")
  assert config_files.resolve("configs/study_synthetic.py:smoke") == \
      "configs/study_synthetic.py:smoke"


def test_shipped_names_are_the_experiment_configs_not_the_helpers():
  names = config_files.shipped_names()
  assert {"study_synthetic", "pretrain_s2", "finetune_landcover"} <= set(names)
  assert not {"defaults", "_benchmark", "_shared_data", "__init__"} & set(names)


def test_an_unknown_name_is_one_error_listing_the_shipped_ones():
  with pytest.raises(ConfigError, match=r"^--config: file not found: study_synthetc .*"
                     r"shipped: .*study_synthetic"):
    config_files.resolve("study_synthetc:smoke")


def test_the_entry_point_runs_a_shipped_config_by_name_outside_the_checkout(tmp_path):
  # --mode=study without --workdir: the config was found and loaded, then the mode refuses.
  proc = _console(tmp_path, "--mode=study", "--config=study_synthetic:smoke")
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert proc.stderr.strip() == "error: --workdir is required for --mode=study"


def test_the_entry_point_rejects_an_unknown_config_name_in_one_line(tmp_path):
  proc = _console(tmp_path, "--mode=build", "--config=study_synthetc:smoke")
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr[-2000:]
  assert lines[0].startswith("error: --config: file not found: study_synthetc ")
  assert "study_synthetic" in lines[0] and "pretrain_s2" in lines[0]


@pytest.mark.slow
def test_the_wheel_carries_configs_the_entry_point_and_the_licence(tmp_path):
  src = tmp_path / "src"   # a copy: building in place would leave build/ in the checkout
  shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
      ".git", ".venv", ".data", "workdirs", "build", "dist", "*.egg-info", "__pycache__",
      ".pytest_cache"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w",
                  str(tmp_path / "dist")], check=True)
  wheel, = (tmp_path / "dist").glob("ee_jax-*.whl")
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
  assert {"configs/__init__.py", "configs/study_synthetic.py", "configs/defaults.py",
          "ee_jax/cli.py", "ee_jax/config_files.py",
          "ee_jax/geo/vector_labels.py", "tfds_builders/landcover_tiles/builder.py"} <= names
  assert any(n.endswith("/LICENSE") for n in names if ".dist-info/" in n)
  assert any(n.endswith("/CITATION.cff") for n in names if ".dist-info/" in n)
  assert "[console_scripts]" in entry_points
  assert "ee-jax = ee_jax.cli:main" in entry_points
  assert not any(n.startswith("tests/") for n in names)
