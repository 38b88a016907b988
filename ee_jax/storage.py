"""Workdir files (configs, metrics, eval/study json, the report) on local disk or in a bucket.

On TPU VMs a workdir is often `gs://bucket/run`: orbax already writes checkpoints there,
and the small files a run writes beside them go through `etils.epath` (gs:// and s3:// via
its fsspec or TensorFlow backend), so a run's record stays in one place. Local paths keep
their atomic write (a temporary file, then `os.replace`); an object in a bucket appears
whole when its upload completes, so it is written directly. Object stores have no append:
`append_text` rewrites a remote file (metrics.jsonl is small).
"""

import os

from etils import epath


def is_remote(path) -> bool:
  """A URL workdir (gs://, s3://, ...), as opposed to a local path."""
  return "://" in os.fspath(path)


def path(p) -> epath.Path:
  return epath.Path(os.fspath(p))


def makedirs(p) -> None:
  if is_remote(p):
    path(p).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(os.fspath(p), exist_ok=True)


def exists(p) -> bool:
  return path(p).exists() if is_remote(p) else os.path.exists(os.fspath(p))


def isdir(p) -> bool:
  return path(p).is_dir() if is_remote(p) else os.path.isdir(os.fspath(p))


def read_text(p) -> str:
  if is_remote(p):
    return path(p).read_text()
  with open(os.fspath(p)) as f:
    return f.read()


def write_text(p, text: str) -> None:
  """Never half-written (see write_bytes); UTF-8."""
  write_bytes(p, text.encode("utf-8"))


def write_bytes(p, data: bytes) -> None:
  """Never half-written: a local temporary file renamed into place, or one remote object."""
  if is_remote(p):
    path(p).write_bytes(data)
    return
  p = os.fspath(p)
  with open(p + ".tmp", "wb") as f:
    f.write(data)
  os.replace(p + ".tmp", p)


def append_text(p, text: str) -> None:
  """Appends locally; a remote object is rewritten whole (buckets cannot append)."""
  if is_remote(p):
    old = path(p).read_text() if path(p).exists() else ""
    path(p).write_text(old + text)
    return
  with open(os.fspath(p), "a") as f:
    f.write(text)
