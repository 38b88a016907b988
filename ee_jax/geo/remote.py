"""Remote inputs: URLs and GDAL virtual paths for scenes, product lists and label rasters.

Imagery on TPU VMs lives in buckets, and Sentinel-2 archives are served as cloud-optimised
GeoTIFFs over HTTP; GDAL reads both in place through its virtual file systems. A URL
(`gs://b/k`, `s3://b/k`, `http(s)://…`) is mapped to its GDAL path (`/vsigs/b/k`,
`/vsis3/b/k`, `/vsicurl/http(s)://…`); a `/vsi…/` path is used as given. Nothing remote can be
listed here (plain HTTP has no listing), so a remote product is one multi-band GeoTIFF/COG
(or a manifest naming each file), never a folder or a glob pattern. The local-only checks
(`os.path.isfile`) are replaced by opening the raster, so a URL that cannot be read fails
with one line naming it and GDAL's reason.
"""

import os
import posixpath
import urllib.error
import urllib.request

import rasterio

from ee_jax.errors import DataError

_URL_TO_VSI = {"gs://": "/vsigs/", "s3://": "/vsis3/", "az://": "/vsiaz/",
               "http://": "/vsicurl/", "https://": "/vsicurl/"}   # vsicurl keeps the URL
VSI_PREFIXES = ("/vsicurl/", "/vsigs/", "/vsis3/", "/vsiaz/", "/vsiadls/", "/vsioss/",
                "/vsiswift/", "/vsihdfs/", "/vsiwebhdfs/")


def is_remote(path) -> bool:
  """A URL or a GDAL network path (not a local file)."""
  p = os.fspath(path) if isinstance(path, (str, os.PathLike)) else ""
  return p.lower().startswith(tuple(_URL_TO_VSI)) or p.startswith(VSI_PREFIXES)


def gdal_path(path) -> str:
  """The path GDAL opens: URLs mapped to /vsi… paths, anything else unchanged."""
  p = os.fspath(path)
  for url, vsi in _URL_TO_VSI.items():
    if p.lower().startswith(url):
      return vsi + (p if vsi == "/vsicurl/" else p[len(url):])
  return p


def _http_url(path: str) -> str | None:
  p = os.fspath(path)
  if p.startswith("/vsicurl/"):
    return p[len("/vsicurl/"):]
  return p if p.lower().startswith(("http://", "https://")) else None


def _one_line(error) -> str:
  return " ".join(str(error).split())


def check_raster(path, what: str = "image file") -> str:
  """Opens `path` once (header only for a COG) and returns its GDAL path; a path that
  cannot be opened is a DataError naming it with GDAL's message."""
  target = gdal_path(path)
  try:
    with rasterio.open(target):
      pass
  except rasterio.errors.RasterioError as e:
    shown = path if target == os.fspath(path) else f"{path} (GDAL path {target})"
    raise DataError(f"{shown}: cannot open remote {what}: {_one_line(e)}") from None
  return target


def check_not_listed(path, what: str) -> None:
  """Remote folders and glob patterns cannot be listed: one line saying what to give."""
  p = os.fspath(path)
  if p.endswith("/") or "*" in p:
    raise DataError(f"{p}: a remote {what} cannot be a folder or a pattern (remote storage "
                    f"is not listed); give each product as one multi-band GeoTIFF/COG, or a "
                    f"manifest naming every file")


def read_text(path) -> str:
  """A small text file (a manifest) at a URL: HTTP(S) through urllib, buckets through
  etils.epath (which needs gcsfs / s3fs installed)."""
  p = os.fspath(path)
  url = _http_url(p)
  try:
    if url is not None:
      with urllib.request.urlopen(url, timeout=60) as response:
        return response.read().decode("utf-8-sig")
    from etils import epath  # pylint: disable=import-outside-toplevel
    for prefix, vsi in (("gs://", "/vsigs/"), ("s3://", "/vsis3/")):
      if p.startswith(vsi):
        p = prefix + p[len(vsi):]
    return epath.Path(p).read_text(encoding="utf-8-sig")
  except (OSError, urllib.error.URLError, UnicodeDecodeError, ValueError,
          ImportError, NotImplementedError) as e:
    raise DataError(f"{path}: cannot read remote file: {_one_line(e)}") from None


def join(base_dir: str, entry: str) -> str:
  """`entry` of a manifest in `base_dir` (a remote folder): absolute paths and URLs as
  given, relative ones below the manifest's folder."""
  entry = os.fspath(entry)
  if is_remote(entry) or entry.startswith("/"):
    return entry
  return posixpath.join(base_dir, entry)


def dirname(path: str) -> str:
  return posixpath.dirname(os.fspath(path).split("?", 1)[0])


def is_manifest(path) -> bool:
  """A .csv/.json product list (a signed URL's query ignored)."""
  return (isinstance(path, (str, os.PathLike)) and
          os.fspath(path).split("?", 1)[0].lower().endswith((".csv", ".json")))


def stem(path: str) -> str:
  """File name without suffix (and without a signed URL's query)."""
  name = posixpath.basename(os.fspath(path).split("?", 1)[0])
  return os.path.splitext(name)[0]
