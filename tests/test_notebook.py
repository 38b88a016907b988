"""docs/quickstart.ipynb runs from start to end on the smoke parameters (nbclient).

The notebook is executed in a kernel of this interpreter (a kernelspec written to a
temporary folder, found through JUPYTER_PATH: no user-level `ipykernel install` needed),
with its workdir and dataset folder in tmp_path, injected after the cell tagged
`parameters` as papermill does.
"""

import json
import os
import re

import pytest

from tests.helpers import REPO

NOTEBOOK = os.path.join(REPO, "docs", "quickstart.ipynb")


def _outputs(cell, kind):
  return [o for o in cell.get("outputs", []) if kind in o.get("data", {})]


def _text(cell):
  return "".join(o.get("text", "") for o in cell.get("outputs", [])
                 if o.get("output_type") == "stream")


def test_committed_without_outputs():
  with open(NOTEBOOK, encoding="utf-8") as f:
    nb = json.load(f)
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code and all(not c["outputs"] and c["execution_count"] is None for c in code), (
      "docs/quickstart.ipynb carries outputs: strip them before committing")
  assert any("parameters" in c["metadata"].get("tags", []) for c in code)


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat",
                                 reason="nbformat not installed (pip install '.[test]')")
  nbclient = pytest.importorskip("nbclient",
                                 reason="nbclient not installed (pip install '.[test]')")
  kernelspec = pytest.importorskip("ipykernel.kernelspec",
                                   reason="ipykernel not installed (pip install '.[test]')")
  prefix = tmp_path / "jupyter"
  kernelspec.install(kernel_name="ee-jax-test", prefix=str(prefix))   # argv: sys.executable
  monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
  monkeypatch.setenv("EE_JAX_COMPILATION_CACHE", str(tmp_path / "xla"))   # not the user's
  nb = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  nb.cells.insert(index + 1, nbformat.v4.new_code_cell(
      f"WORKDIR = {str(tmp_path / 'work')!r}\nDATA_DIR = {str(tmp_path / 'tfds')!r}"))
  client = nbclient.NotebookClient(nb, kernel_name="ee-jax-test", timeout=600,
                                   resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()   # a cell's error raises CellExecutionError with its traceback

  by_tag = {t: c for c in nb.cells for t in c.metadata.get("tags", [])}
  assert _outputs(by_tag["pca"], "image/png"), "the PCA figure is missing"
  assert _outputs(by_tag["class_map"], "image/png"), "the class map is missing"
  text = _text(by_tag["probe"])
  accuracy = dict(re.findall(
      r"probe accuracy \((embedding|raw bands), \w[\w-]*\): ([\d.]+)%", text))
  assert set(accuracy) == {"embedding", "raw bands"}, text
  assert all(0 <= float(a) <= 100 for a in accuracy.values()), text
  # the rule is a function of the bands: a linear probe of them must find it
  assert float(accuracy["raw bands"]) > 90, text
  # it ran this checkout's code and wrote only where it was told
  assert os.path.join(REPO, "ee_jax") in "".join(_text(c) for c in nb.cells)
  assert (tmp_path / "work" / "pretrain_s2_smoke" / "checkpoints").is_dir()
