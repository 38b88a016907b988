"""Remote data (issue 31, item 4): scenes and manifests over HTTP, bad URLs, remote workdirs.

A small COG is served by tests/range_server.py (127.0.0.1 only, Range requests) in a
process of its own: GDAL holds the GIL while it reads, so a server thread in this process
would never answer. The workdir layer is checked with an in-memory fsspec filesystem
registered for gs:// (no bucket, no network).
"""

import json
import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import rasterio

from ee_jax import inference
from ee_jax.data import contract, datasets
from ee_jax.errors import ConfigError, DataError
from ee_jax.geo import remote
from tests import rasters
from tests.helpers import BANDS, FAST, data_cfg, field_scene, read, s2_cfg, save_checkpoint
from tests.helpers import SCENE_BANDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """(folder served, base URL): files written into the folder are at base URL + name."""
  folder = tmp_path_factory.mktemp("served")
  proc = subprocess.Popen([sys.executable, "-m", "tests.range_server", str(folder)],
                          cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    port = int(proc.stdout.readline())
    yield folder, f"http://127.0.0.1:{port}"
  finally:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ft_ckpt(tmp_path_factory):
  return save_checkpoint(tmp_path_factory.mktemp("ft"))


def write_cog(path, image, names):
  """A tiled GeoTIFF (COG layout) with band descriptions: image uint16 [H, W, C]."""
  h, w, c = image.shape
  with rasterio.open(path, "w", driver="COG", width=w, height=h, count=c, dtype="uint16",
                     crs=rasters.CRS, nodata=0, blocksize=32,
                     transform=rasterio.transform.from_origin(*rasters.ORIGIN, 10, 10)) as ds:
    ds.write(np.moveaxis(image, -1, 0))
    for i, b in enumerate(names):
      ds.set_band_description(i + 1, b)
  return str(path)


def test_urls_map_to_gdal_paths():
  assert remote.gdal_path("gs://b/k/x.tif") == "/vsigs/b/k/x.tif"
  assert remote.gdal_path("s3://b/x.tif") == "/vsis3/b/x.tif"
  assert remote.gdal_path("https://h/x.tif?sig=1") == "/vsicurl/https://h/x.tif?sig=1"
  assert remote.gdal_path("/vsicurl/http://h/x.tif") == "/vsicurl/http://h/x.tif"
  assert remote.gdal_path("/data/x.tif") == "/data/x.tif"
  assert remote.is_remote("/vsigs/b/x.tif") and not remote.is_remote("/data/gs/x.tif")
  assert remote.stem("https://h/a/T31_20200101.tif?sig=1") == "T31_20200101"
  assert remote.is_manifest("https://h/list.CSV?sig=1") and not remote.is_manifest("x.tif")


def test_s2_tiles_build_from_a_url_equals_the_local_build(tmp_path, served):
  folder, base = served
  rng = np.random.default_rng(0)
  image = rng.integers(1, 5000, (64, 96, len(BANDS))).astype(np.uint16)
  image[:5] = 0   # nodata rows, read and masked alike
  write_cog(folder / "scene.tif", image, BANDS)
  local = datasets.prepare(s2_cfg(tmp_path, [str(folder / "scene.tif")], max_invalid=0.5))
  # The URL through a manifest served beside it (relative paths are relative to it).
  (folder / "list.csv").write_text("path,product_id\nscene.tif,scene\n")
  url = datasets.prepare(s2_cfg(tmp_path, [], manifest=f"{base}/list.csv", max_invalid=0.5,
                                config_name="url"))
  log = (folder / "requests.log").read_text()
  assert "GET /list.csv" in log and "GET /scene.tif bytes=" in log   # read in place
  for split in local.info.splits:
    a, b = local.as_data_source(split), url.as_data_source(split)
    assert len(a) == len(b) > 0
    for i in range(len(a)):
      for key in (contract.IMAGE, contract.VALID, contract.ROW, contract.COL):
        np.testing.assert_array_equal(a[i][key], b[i][key])
  assert local.info.splits.keys() == url.info.splits.keys()


def test_landcover_build_with_url_image_and_label_equals_the_local_build(tmp_path, served):
  folder, base = served
  rng = np.random.default_rng(1)
  write_cog(folder / "lc.tif", rng.integers(1, 5000, (64, 64, len(BANDS))).astype(np.uint16),
            BANDS)
  raw = rng.integers(0, 3, (64, 64)).astype(np.uint8)   # 2: not a class -> ignored
  rasters.write_raster(folder / "lc_label.tif", raw, 10, nodata=255)
  builds = []
  for name, root in (("local", str(folder)), ("url", base)):
    builds.append(datasets.prepare(data_cfg(
        tmp_path, name="landcover_tiles", config_name=name, classes=[["a", 0], ["b", 1]],
        scenes=[dict(images=[f"{root}/lc.tif"], label=f"{root}/lc_label.tif")], bands=BANDS,
        tile_size=32, stride=32, block_tiles=1, split_fractions={"train": 1.0})))
  a, b = (x.as_data_source("train") for x in builds)
  assert len(a) == len(b) == 4
  for i in range(4):
    for key in (contract.IMAGE, contract.LABEL, contract.ROW, contract.COL):
      np.testing.assert_array_equal(a[i][key], b[i][key])
  assert "GET /lc_label.tif bytes=" in (folder / "requests.log").read_text()


def test_predict_on_a_url_equals_predict_on_the_local_file(tmp_path, served, ft_ckpt):
  folder, base = served
  write_cog(folder / "field.tif", field_scene(40, 56, seed=3), SCENE_BANDS)
  (folder / "field.json").write_text(json.dumps([{"path": "field.tif"}]))
  outs = []
  for name, src in (("local", str(folder / "field.tif")), ("vsi", f"/vsicurl/{base}/field.tif"),
                    ("manifest", f"{base}/field.json?signature=x")):   # a signed URL
    out = tmp_path / f"{name}.tif"
    inference.predict_scene(ft_ckpt, src, str(out), **FAST)
    outs.append(read(out))
  # --mode=predict as launch.py runs it, on the URL.
  from ee_jax import run as run_lib  # pylint: disable=import-outside-toplevel
  cfg = ml_collections.ConfigDict({"inference": inference.default_config()})
  cfg.inference.update(tile_size=FAST["tile_size"], overlap=FAST["overlap"],
                       per_device_batch=FAST["per_device_batch"])
  run_lib.run("predict", cfg, ft_ckpt, scene=f"{base}/field.tif", out=str(tmp_path / "u.tif"))
  outs.append(read(tmp_path / "u.tif"))
  with pytest.raises(SystemExit) as e:
    run_lib.run("predict", cfg, ft_ckpt, scene=f"{base}/gone.tif", out=str(tmp_path / "g.tif"))
  assert f"{base}/gone.tif" in str(e.value) and "404" in str(e.value)
  assert "\n" not in str(e.value).strip()
  for other in outs[1:]:
    np.testing.assert_array_equal(outs[0], other)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_bad_urls_are_one_line_naming_them(tmp_path, served, ft_ckpt):
  _, base = served
  missing = f"{base}/nothing_here.tif"
  dead = f"http://127.0.0.1:{_free_port()}/x.tif"
  for url, reason in ((missing, "404"), (dead, "connect")):
    with pytest.raises(DataError) as e:
      datasets.prepare(s2_cfg(tmp_path, [url], config_name="bad"))
    text = str(e.value)
    assert url in text and reason in text and "\n" not in text
  with pytest.raises(DataError, match="cannot read remote file.*404"):
    datasets.prepare(s2_cfg(tmp_path, [], manifest=f"{base}/none.csv", config_name="bad"))
  with pytest.raises(DataError, match="not listed"):
    datasets.prepare(s2_cfg(tmp_path, [f"{base}/products/"], config_name="bad"))
  with pytest.raises(DataError, match="not listed"):
    datasets.prepare(s2_cfg(tmp_path, [f"{base}/*.tif"], config_name="bad"))
  with pytest.raises(DataError, match=f"{missing}.*404"):
    inference.predict_scene(ft_ckpt, missing, str(tmp_path / "o.tif"), **FAST)
  assert not os.path.exists(tmp_path / "o.tif")
  with pytest.raises(ConfigError, match="--out=gs://b/o.tif: outputs are written locally"):
    inference.predict_scene(ft_ckpt, f"{base}/nothing_here.tif", "gs://b/o.tif", **FAST)


# ------------------------------------------------------------------- remote workdirs
@pytest.fixture
def fake_gcs(monkeypatch):
  """gs:// served by an in-memory fsspec filesystem (etils.epath's fsspec backend asks
  fsspec for 'gcs'); returns its store {'/bucket/key': file}. TensorFlow, if installed,
  would take gs:// instead: the test then skips."""
  pytest.importorskip("fsspec")
  from fsspec.implementations.memory import MemoryFileSystem
  from etils.epath import backend, gpath
  if gpath._is_tf_installed():  # pylint: disable=protected-access
    pytest.skip("TensorFlow installed: etils.epath sends gs:// to tf.io.gfile")

  class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store, pseudo_dirs = {}, [""]

    @classmethod
    def _strip_protocol(cls, path):
      path = str(path)
      for prefix in ("gs://", "gcs://"):
        if path.startswith(prefix):
          path = path[len(prefix):]
      return "/" + path.strip("/")

  registered = sys.modules["fsspec.registry"]._registry  # pylint: disable=protected-access
  for name in ("gs", "gcs"):   # restored after the test, so a real gcsfs is used again
    monkeypatch.setitem(registered, name, FakeGCS)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  yield FakeGCS.store
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def test_workdir_files_go_to_a_remote_workdir(fake_gcs, tmp_path, monkeypatch):
  import io  # pylint: disable=import-outside-toplevel
  from configs import study_synthetic  # pylint: disable=import-outside-toplevel
  from ee_jax import report  # pylint: disable=import-outside-toplevel
  from ee_jax.train import metrics_log, pretrain  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)   # nothing may land in a local folder named gs:
  workdir = "gs://bucket/run"
  out = io.StringIO()
  log = metrics_log.MetricsLog(workdir, total_steps=3, enabled=True, stream=out)
  for step in (1, 2, 3):
    log.write(step, {"loss": 1.0 / step})
  log.truncate_after(2)    # a resume from step 2 drops step 3
  log.write(3, {"loss": 0.25})
  log.close()
  assert [r["loss"] for r in metrics_log.read_metrics(workdir)] == [1.0, 0.5, 0.25]
  lines = fake_gcs["/bucket/run/metrics.jsonl"].getvalue().decode().splitlines()
  assert [json.loads(x)["step"] for x in lines] == [1, 2, 3]
  assert out.getvalue().count("no TensorBoard event files") == 1
  c = study_synthetic.get_config("smoke")
  pretrain.write_config(c, workdir)
  assert json.loads(fake_gcs["/bucket/run/config.json"].getvalue())["study"]
  runs = [{"name": "a", "fraction": 1.0, "init": init, "seed": 0, "miou": m, "oa": m,
           "per_class_iou": []} for init, m in (("pretrained", 0.6), ("random", 0.5))]
  report.write_study_json(workdir, runs, c, "/pre", complete=True)
  made = report.write_report(workdir, report.summarise(runs), c, "/pre")
  assert json.loads(fake_gcs["/bucket/run/study.json"].getvalue())["complete"] is True
  assert "| 1 |" in fake_gcs["/bucket/run/report.md"].getvalue().decode()
  assert fake_gcs["/bucket/run/label_fraction.png"].getvalue()[:4] == b"\x89PNG"
  assert made["report"] == "gs://bucket/run/report.md"
  from ee_jax.data import label_fractions  # pylint: disable=import-outside-toplevel
  label_fractions.write_selection(workdir, [3, 1], {"fraction": 0.5, "seed": 0})
  assert label_fractions.read_selection(workdir)["indices"] == [1, 3]
  with pytest.raises(ConfigError, match="different selection"):
    label_fractions.write_selection(workdir, [2], {"fraction": 0.25, "seed": 0})
  assert not os.path.exists(tmp_path / "gs:") and not list(tmp_path.iterdir())
