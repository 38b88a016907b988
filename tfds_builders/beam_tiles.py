"""A TileBuilder's examples as an Apache Beam pipeline (`config.data.beam_runner`).

One element per work unit (a product, a scene, a Major TOM row group, an SSL4EO location),
read once by one worker, its tiles dealt to the splits as tagged outputs; TFDS's own
BeamWriter (tfds.core.split_builder) then writes the same array_record shards as the plain
build. What the plain build accumulates in one process is combined here across workers:
per-band float64 moments (BandStats.merge, Chan et al.), class pixel counts, tiles per
split and an archive's Summary. The combined result is written as JSON into the dataset's
incomplete folder and read back into the metadata once the pipeline has run
(`record_results`), so the dataset still appears only when complete.
"""

import json
import re

import apache_beam as beam
from etils import epath
import numpy as np

from ee_jax.data import contract
from ee_jax.data.stats import BandStats
from ee_jax.errors import DataError
from ee_jax.geo.archives import Summary

RESULTS = "beam_results.json"   # in the incomplete dataset folder, removed before the rename
PARTIAL = "_partial"            # tag of each unit's statistics


class Partial:
  """What one unit (or a merge of units) contributes besides its examples."""

  def __init__(self, num_bands: int, num_classes: int, splits):
    self.stats = BandStats(num_bands)
    self.counts = {s: np.zeros(num_classes, np.int64) for s in splits}
    self.tiles = {s: 0 for s in splits}
    self.summary = Summary()

  def add(self, split: str, example: dict, stats_splits, labelled: bool) -> None:
    self.tiles[split] += 1
    if split in stats_splits:
      self.stats.update(example[contract.IMAGE][example[contract.VALID]])
    if labelled:
      label = example[contract.LABEL]
      n = len(self.counts[split])
      self.counts[split] += np.bincount(label[label != contract.IGNORE_INDEX],
                                        minlength=n)[:n]

  def merge(self, other: "Partial") -> "Partial":
    self.stats.merge(other.stats)
    for s in self.counts:
      self.counts[s] += other.counts[s]
      self.tiles[s] += other.tiles[s]
    self.summary.merge(other.summary)
    return self

  def as_dict(self) -> dict:
    sm = self.summary
    return {"stats": self.stats.as_dict(),
            "class_counts": {s: c.tolist() for s, c in self.counts.items()},
            "tiles": dict(self.tiles),
            "summary": {"products": sm.products, "scenes": sm.scenes, "dates": sm.dates,
                        "offsets": dict(sm.offsets), "crs": dict(sm.crs)}}


class _Combine(beam.CombineFn):
  """Partials of all units -> one (the merge is associative, order only moves ulps)."""

  def __init__(self, shape):
    self._shape = shape

  def create_accumulator(self):
    return Partial(*self._shape)

  def add_input(self, acc, part):
    return acc.merge(part)

  def merge_accumulators(self, accs):
    accs = iter(accs)
    first = next(accs)
    for acc in accs:
      first.merge(acc)
    return first

  def extract_output(self, acc):
    return acc.as_dict()


class _ReadUnit(beam.DoFn):
  """One unit -> its tiles (tagged by split) and its Partial. A failure is one DataError
  naming the unit's files, so the runner's report names the corrupt product."""

  def __init__(self, cls, params, context, splits, shape):
    self._cls, self._params, self._context = cls, params, context
    self._splits, self._shape = list(splits), shape

  def process(self, unit):
    part = Partial(*self._shape)
    cls = self._cls
    try:
      for split, key, example in cls._unit_tiles(self._params, self._context, unit,
                                                 self._splits, part.summary):
        part.add(split, example, cls.STATS_SPLITS, cls.LABELLED)
        yield beam.pvalue.TaggedOutput(split, (key, example))
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (readers' errors vary by cause)
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      raise DataError(f"{cls._describe_unit(unit)}: cannot be read ({first})") from e
    yield beam.pvalue.TaggedOutput(PARTIAL, part)


class _SplitOf(beam.PTransform):
  """The examples of one split; the first split's expansion reads every unit once."""

  def __init__(self, builder, split):
    super().__init__()
    self._builder, self._split = builder, split

  def expand(self, pbegin):
    outputs = read_units(self._builder, pbegin.pipeline)
    return outputs[self._split] | "Take" >> beam.Map(lambda kv: kv)


def guard_runner_data_plane() -> bool:
  """Makes Beam's time-flushed data-plane stream lose nothing; True once it is guarded.

  Beam's FnApiRunner (DirectRunner) sends each bundle's input to a worker through a
  `TimeBasedBufferingClosableOutputStream` (worker_handlers.py: BeamFnDataServicer(
  DATA_BUFFER_TIME_LIMIT_MS=1000)). Its periodic flusher thread runs `flush()`:
  `callback(self.get())` then `self._clear()` (data_plane.py), holding a lock that
  `write()` does not take. The callback queues the bytes for gRPC and blocks while the
  100 MB send queue is full; meanwhile the runner's thread keeps writing the input's
  chunks (fn_runner.py `_send_input_to_worker`), and `_clear()` then discards them: whole
  elements vanish, silently, when an input is large enough to fill the queue (the
  train tiles TFDS's BeamWriter shuffles, apache-beam 2.78.0). Here `write()` takes the
  flush lock, so a write waits for a flush in progress instead of being cleared by it.
  Applied in the process that runs the pipeline; idempotent."""
  try:
    from apache_beam.runners.worker import data_plane  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  cls = getattr(data_plane, "TimeBasedBufferingClosableOutputStream", None)
  if cls is None:
    return False
  if getattr(cls, "_ee_jax_write_guarded", False):
    return True
  unguarded_write = cls.write   # OutputStream.write (Cython: no dispatch back to this)

  def write(self, b, nested=False):
    lock = getattr(self, "_flush_lock", None)
    if lock is None:   # a Beam without the flush lock: nothing to wait for
      return unguarded_write(self, b, nested)
    with lock:
      return unguarded_write(self, b, nested)

  cls.write = write
  cls._ee_jax_write_guarded = True
  return True


def read_units(builder, pipeline):
  """The tagged outputs of reading every unit, built once per pipeline; the combined
  partials are written to RESULTS as a side branch."""
  guard_runner_data_plane()   # before the runner opens its data plane
  cached = getattr(builder, "_beam_outputs", None)
  if cached is not None and cached[0] is pipeline:
    return cached[1]
  splits = builder._split_names()
  layout = builder._tile_layout()
  shape = (len(layout["bands"]), len(layout.get("class_names", [])), splits)
  units = getattr(builder, "_beam_unit_list", None) or builder._beam_units()
  read = _ReadUnit(type(builder), builder.params, builder._beam_context(), splits, shape)
  outputs = (pipeline
             | "Units" >> beam.Create(units)
             | "Spread" >> beam.Reshuffle()   # one unit per worker, not one bundle of all
             | "Read" >> beam.ParDo(read).with_outputs(PARTIAL, *splits))
  path = str(builder.data_path / RESULTS)
  _ = (outputs[PARTIAL]
       | "Combine" >> beam.CombineGlobally(_Combine(shape))
       | "WriteResults" >> beam.Map(_write_json, path=path))
  builder._beam_outputs = (pipeline, outputs)
  return outputs


def _write_json(value, path):
  epath.Path(path).write_text(json.dumps(value))


def split_transforms(builder, units: list) -> dict:
  """{split: PTransform} for TFDS's split builder (all reading the units once)."""
  builder._beam_outputs = None
  builder._beam_unit_list = units
  return {split: _SplitOf(builder, split) for split in builder._split_names()}


def writer_counters(pipeline_result) -> dict:
  """TFDS BeamWriter's counters by name (examples serialized, assigned to each shard), or
  {} where the runner reports none."""
  try:
    counters = pipeline_result.metrics().query()["counters"]
  except Exception:  # pylint: disable=broad-except  (a runner without metrics)
    return {}
  out = {}
  for c in counters:
    if c.key.metric.namespace == "BeamWriter":
      out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (c.committed or c.attempted or 0)
  return out


def explain_failure(builder, e: Exception) -> DataError | None:
  """The one line a failed pipeline means, where this code knows it: a worker's DataError
  (the runner wraps it in its own exception with the worker's traceback), or TFDS's writer
  refusing an empty split, which is the plain build's 'no valid tiles' error."""
  for line in str(e).splitlines():
    _, sep, message = line.partition("DataError: ")
    if sep and message.strip():
      return DataError(message.strip())
  m = re.search(r"generated examples is 0 for split (\S+?)\.", str(e))
  return DataError(builder.no_tiles_message(m.group(1))) if m else None


def record_results(builder) -> None:
  """The combined results into the metadata, then their file removed."""
  path = builder.data_path / RESULTS
  res = json.loads(path.read_text())
  path.unlink()
  for split, n in res["tiles"].items():
    if n == 0:
      raise DataError(builder.no_tiles_message(split))
    written = builder.info.splits[split].num_examples
    if written != n:   # a runner that drops or repeats elements must not pass unnoticed
      counters = getattr(builder, "_beam_counters", None) or {}
      assigned = sum(v for k, v in counters.items() if k.startswith(f"{split}.shard_"))
      seen = (f" (the writer serialized {counters['serialized_examples']} tiles of all "
              f"splits and assigned {assigned} to {split} shards)"
              if "serialized_examples" in counters else "")
      raise DataError(f"{builder.name}: the Beam runner wrote {written} tiles of the {split} "
                      f"split but the workers read {n}{seen}; nothing was kept. Rerun, or "
                      f"build with data.beam_runner='' (the plain build)")
  stats = BandStats.from_dict(res["stats"])
  summary = Summary()
  s = res["summary"]
  summary.products, summary.scenes, summary.dates = s["products"], s["scenes"], s["dates"]
  summary.offsets.update(s["offsets"])
  summary.crs.update(s["crs"])
  builder._archive_summary = summary   # what an archive build's metadata reports
  builder.record_metadata(stats, res["class_counts"])
