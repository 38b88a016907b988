"""Host input pipeline: prepared dataset -> per-process numpy batches for `jax.pmap`.

No tf.data: a split is opened with `builder.as_data_source(split)` (random access into the
array_record shards), examples are read and decoded on host, batched into numpy, and
prepared ahead in a background thread. Every batch is a dict of arrays shaped
`[local_devices, per_device_batch, ...]`.

Training order (deterministic in `(seed, step)`, independent of the number of processes):

* epoch `e` visits the N examples in the order `epoch_permutation(N, seed, e)` (a numpy
  Generator seeded from `(seed, e)`);
* the stream is consumed epoch after epoch; each epoch yields `N // G` global batches of
  `G = per_device_batch * total devices` examples and drops the remainder;
* global batch `step` is split among processes by contiguous sub-slices: process `p` takes
  positions `[p * L, (p + 1) * L)` of it, with `L = local_devices * per_device_batch`.

So a run restarted at step `s` sees exactly the batches an uninterrupted run would have seen
from `s`, and the content of each global batch does not depend on how many processes share
it.

Training on a subset (`indices`, e.g. a label fraction from `ee_jax.data.label_fractions`):
the subset is a set (sorted first, so its order does not matter) of M split indices, and
epochs permute it instead of the split: epoch `e` visits `subset[epoch_permutation(M, seed,
e)]`. The subset of all N examples is therefore exactly the unsubsetted stream. A subset
smaller than one global batch (say 4 tiles, global batch 16) is not an error: its epoch is
`P = ceil(G / M)` seeded permutations of it, concatenated (`subset[epoch_permutation(M, seed,
e * P + j)]`, j = 0 .. P-1), so one epoch fills at least one global batch and each example
appears P (or P - 1, the remainder being dropped) times per epoch. Batches then hold repeated
examples; `index` stays the real split index. Everything else (determinism, resume, process
slicing) is unchanged. Without a subset, a split smaller than one global batch stays a
ConfigError (lower the batch size).

Besides the requested features every batch carries

* `index` (int64): the example's index in the split (-1 for evaluation padding);
* `global_position` (int32): the example's position in its global batch, `0 .. G-1`; with
  the step it names the example independently of the device count, e.g. for per-example
  random keys `fold_in(fold_in(key, step), global_position)`.

Evaluation visits every example of the split exactly once, in order; the last global batch
is padded (with copies of example 0) and a boolean `mask` marks the real examples. Every
process yields the same number of batches, so collectives inside the eval step line up.

Speed: records are read raw and only the requested keys are decoded, array bytes straight
into the batch arrays (TFDS's full decoding of every key costs ~70 us more per 64x64x13
tile); each batch is split among `num_threads` persistent reader threads (default 2). Most
of the remaining cost is array_record reading and decompressing records (~130-170 us a
tile). Measured figures: `benchmarks/input_pipeline.py`.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import queue
import threading
from concurrent import futures
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import decode as tfds_decode

from ee_jax.errors import ConfigError, DataError

try:  # The proto TFDS itself parses records with (no TensorFlow needed).
  from tensorflow_datasets.proto import tf_example_pb2 as _example_pb2
except ImportError:  # pragma: no cover - fall back to TFDS's own decoding
  _example_pb2 = None

Batch = dict[str, np.ndarray]

INDEX = "index"
GLOBAL_POSITION = "global_position"
MASK = "mask"
_EXTRA_KEYS = (INDEX, GLOBAL_POSITION, MASK)
DEFAULT_NUM_THREADS = 2  # reader threads per batch


# --------------------------------------------------------------------------------------
# Process layout and the order of examples (pure functions of the arguments).
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ProcessLayout:
  """Which part of every global batch this process handles.

  Defaults come from JAX (`jax.process_index()`, `jax.process_count()`,
  `jax.local_device_count()`); tests pass them explicitly to simulate several processes.
  All processes are assumed to have the same number of local devices (as `pmap` needs).
  """
  process_index: int
  process_count: int
  local_devices: int

  def __post_init__(self):
    if self.process_count < 1 or self.local_devices < 1:
      raise ConfigError(f"process_count ({self.process_count}) and local_devices "
                        f"({self.local_devices}) must be >= 1")
    if not 0 <= self.process_index < self.process_count:
      raise ConfigError(f"process_index {self.process_index} is not in "
                        f"[0, {self.process_count})")

  @classmethod
  def from_jax(cls, process_index: int | None = None, process_count: int | None = None,
               local_devices: int | None = None) -> "ProcessLayout":
    """JAX's values for whatever is not given."""
    if process_index is None or process_count is None or local_devices is None:
      import jax  # pylint: disable=import-outside-toplevel
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
      local_devices = jax.local_device_count() if local_devices is None else local_devices
    return cls(int(process_index), int(process_count), int(local_devices))

  def local_batch(self, per_device_batch: int) -> int:
    """Examples per batch on this process: `local_devices * per_device_batch`."""
    return self.local_devices * per_device_batch

  def global_batch(self, per_device_batch: int) -> int:
    """Examples per global batch: `per_device_batch * total devices`."""
    return self.process_count * self.local_batch(per_device_batch)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order (int64 indices) in which epoch `epoch` visits the split."""
  rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch)])
  return rng.permutation(num_examples).astype(np.int64)


def steps_per_epoch(num_examples: int, global_batch: int, passes: int = 1) -> int:
  """Full global batches per epoch of `passes` passes over `num_examples` examples (the
  remainder of each epoch is dropped)."""
  return (passes * num_examples) // global_batch


def subset_passes(subset_size: int, global_batch: int) -> int:
  """Passes over a training subset per epoch: 1, or `ceil(G / M)` when the subset is smaller
  than one global batch."""
  if subset_size < 1:
    raise ConfigError(f"a training subset needs at least one example, got {subset_size}")
  return max(1, -(-global_batch // subset_size))


def check_subset(indices, num_examples: int, where: str = "the split") -> np.ndarray:
  """`indices` as a sorted int64 array of distinct indices in `[0, num_examples)`."""
  subset = np.asarray(indices)
  if subset.ndim != 1 or not subset.size:
    raise ConfigError(f"training indices must be a non-empty 1-D list of example indices, got "
                      f"shape {subset.shape}")
  if not np.issubdtype(subset.dtype, np.integer):
    if not (np.issubdtype(subset.dtype, np.floating) and np.all(subset == np.round(subset))):
      raise ConfigError(f"training indices must be integers, got dtype {subset.dtype}")
  subset = np.sort(subset.astype(np.int64))
  bad = subset[(subset < 0) | (subset >= num_examples)]
  if bad.size:
    raise ConfigError(f"training indices {bad[:8].tolist()} are outside {where} "
                      f"({num_examples} examples)")
  repeated = subset[1:][subset[1:] == subset[:-1]]
  if repeated.size:
    raise ConfigError(f"training indices must be distinct; repeated: "
                      f"{np.unique(repeated)[:8].tolist()}")
  return subset


def _epoch_order(num_examples: int, seed: int, epoch: int, subset: np.ndarray | None,
                 passes: int) -> np.ndarray:
  """Split indices visited by training epoch `epoch` (before dropping the remainder)."""
  if subset is None:
    return epoch_permutation(num_examples, seed, epoch)
  m = len(subset)
  if passes == 1:
    return subset[epoch_permutation(m, seed, epoch)]
  return np.concatenate([subset[epoch_permutation(m, seed, epoch * passes + j)]
                         for j in range(passes)])


def train_indices(num_examples: int, global_batch: int, seed: int, step: int,
                  indices=None) -> np.ndarray:
  """Dataset indices of global training batch `step` (all processes together), [G].

  `indices`: None (the whole split of `num_examples`) or the subset trained on."""
  subset = None if indices is None else check_subset(indices, num_examples)
  m = num_examples if subset is None else len(subset)
  passes = 1 if subset is None else subset_passes(m, global_batch)
  spe = steps_per_epoch(m, global_batch, passes)
  if spe == 0:
    raise ConfigError(f"the split has {num_examples} examples, fewer than one global batch "
                      f"({global_batch}); lower config.data.per_device_batch")
  epoch, within = divmod(int(step), spe)
  order = _epoch_order(num_examples, seed, epoch, subset, passes)
  return order[within * global_batch:(within + 1) * global_batch]


def num_eval_batches(num_examples: int, global_batch: int) -> int:
  """Global batches needed to visit every example once (the last one padded)."""
  return -(-num_examples // global_batch)


# --------------------------------------------------------------------------------------
# Opening a split and decoding records.
# --------------------------------------------------------------------------------------
def open_builder(dataset) -> tfds.core.DatasetBuilder:
  """A prepared dataset: a `DatasetBuilder` (as `datasets.prepare` returns) or the path of
  a prepared dataset folder (the one holding `dataset_info.json`)."""
  if isinstance(dataset, tfds.core.DatasetBuilder):
    return dataset
  if not isinstance(dataset, (str, os.PathLike)):
    raise TypeError(f"expected a DatasetBuilder or the path of a prepared dataset, got "
                    f"{type(dataset).__name__}")
  path = os.path.abspath(os.path.expanduser(os.fspath(dataset)))
  if not os.path.isdir(path):
    raise DataError(f"{path}: no such dataset folder; build the dataset first "
                    f"(`python launch.py --mode=build --config=...`)")
  if not os.path.exists(os.path.join(path, "dataset_info.json")):
    raise DataError(f"{path}: not a prepared dataset (no dataset_info.json); point at the "
                    f"<data_dir>/<name>/<config>/<version> folder of a completed build")
  return tfds.builder_from_directory(path)


def open_split(dataset, split: str, raw: bool = False):
  """`builder.as_data_source(split)`; with `raw=True` the records are undecoded bytes."""
  builder = open_builder(dataset)
  splits = builder.info.splits
  if split not in splits:
    raise DataError(f"{builder.data_dir}: no split '{split}'; available: {sorted(splits)}")
  method = (tfds_decode.DeserializeMethod.RAW_BYTES if raw else
            tfds_decode.DeserializeMethod.DESERIALIZE_AND_DECODE)
  try:
    return builder.as_data_source(split, deserialize_method=method)
  except Exception as e:  # e.g. a shard listed in dataset_info.json is missing
    raise DataError(f"{builder.data_dir}: cannot open split '{split}': {e}") from e


def _is_string(feature) -> bool:
  return np.dtype(feature.np_dtype).kind in "OSU"


def default_keys(features) -> tuple[str, ...]:
  """The keys that go to devices by default: every top-level numeric feature (strings such
  as `crs` and `scene_id` stay on host unless asked for)."""
  return tuple(k for k, f in features.items()
               if isinstance(f, tfds.features.Tensor) and not _is_string(f))


def _fast_spec(feature):
  """(how, dtype, shape) where a feature can be decoded straight from the proto: how is
  'bytes' (raw array bytes), 'list' (int64/float list) or 'text' (one bytes value)."""
  if type(feature) is tfds.features.Text:  # pylint: disable=unidiomatic-typecheck
    return "text", np.dtype(object), ()
  if type(feature) not in (tfds.features.Tensor, tfds.features.Scalar):
    return None
  shape = tuple(feature.shape)
  dtype = np.dtype(feature.np_dtype)
  content = feature.to_json_content()
  if (None in shape or dtype.kind in "OSU" or dtype == np.uint64 or content.optional or
      content.encoding not in ("bytes", "none", "")):
    return None
  return ("bytes" if content.encoding == "bytes" else "list"), dtype, shape


class _Decoder:
  """Decodes the requested keys of raw records into preallocated batch arrays.

  Tensor features with static shapes (the tile contract's arrays) are decoded directly
  from the `tf.train.Example` proto exactly as TFDS does; anything else goes through
  `features.deserialize_example_np`. `check` compares both paths on one record.
  """

  def __init__(self, features, keys: Sequence[str]):
    self.features = features
    self.keys = tuple(keys)
    self.specs = {}
    for key in self.keys:
      feature = features[key]
      shape = tuple(feature.shape) if isinstance(feature, tfds.features.Tensor) else None
      if shape is None or None in shape:
        raise ConfigError(f"batch key '{key}' ({type(feature).__name__}) has no static "
                          f"shape; it cannot be batched")
      dtype = np.dtype(object) if _is_string(feature) else np.dtype(feature.np_dtype)
      self.specs[key] = (dtype, shape)
    fast = {k: _fast_spec(features[k]) for k in self.keys}
    self.fast = fast if (_example_pb2 is not None and all(fast.values())) else None

  def allocate(self, n: int) -> Batch:
    return {k: np.empty((n,) + shape, dtype) for k, (dtype, shape) in self.specs.items()}

  def decode_into(self, records: Sequence[bytes], out: Batch, offset: int) -> None:
    if self.fast is None:
      for j, record in enumerate(records):
        example = self.features.deserialize_example_np(record)
        for key in self.keys:
          out[key][offset + j] = example[key]
      return
    for j, record in enumerate(records):
      fmap = _example_pb2.Example.FromString(record).features.feature
      for key, (how, dtype, shape) in self.fast.items():
        feature = fmap[key]
        if how == "bytes":
          value = np.frombuffer(feature.bytes_list.value[0], dtype).reshape(shape)
        elif how == "text":
          value = feature.bytes_list.value[0]
        elif feature.HasField("int64_list"):
          value = np.asarray(feature.int64_list.value, dtype).reshape(shape)
        else:
          value = np.asarray(feature.float_list.value, dtype).reshape(shape)
        out[key][offset + j] = value

  def check(self, record: bytes) -> None:
    """The fast path must give exactly what TFDS gives (guards against format changes)."""
    if self.fast is None:
      return
    got, want = self.allocate(1), self.allocate(1)
    self.decode_into([record], got, 0)
    fast, self.fast = self.fast, None
    self.decode_into([record], want, 0)
    if all(np.array_equal(got[k], want[k]) for k in self.keys):
      self.fast = fast
    # else: keep TFDS's decoding (correct, only slower)


# --------------------------------------------------------------------------------------
# Background prefetch.
# --------------------------------------------------------------------------------------
class _End:
  pass


@dataclasses.dataclass
class _Failed:
  error: BaseException


def _produce(make: Callable[[int], Any], items: Iterator[int], out: queue.Queue,
             stop: threading.Event) -> None:
  """Producer thread: `make(i)` for each i, in order, into `out`; ends with a marker.

  Holds no reference to the consumer-side iterator, so an abandoned iterator can be
  garbage collected (its finaliser stops this thread)."""

  def put(item) -> bool:
    while not stop.is_set():
      try:
        out.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  try:
    for i in items:
      if stop.is_set():
        return
      if not put(make(i)):
        return
    put(_End())
  except BaseException as e:  # pylint: disable=broad-except
    put(_Failed(e))


class BatchIterator:
  """Iterator over host batches with background prefetch.

  `next()` returns a dict of numpy arrays `[local_devices, per_device_batch, ...]`.
  An exception raised while preparing a batch is re-raised by `next()`. `close()` (or
  leaving a `with` block) stops the background thread; closing is idempotent.
  """

  def __init__(self, make: Callable[[int], Batch], items: Sequence[int] | Iterator[int], *,
               prefetch: int, pool: futures.ThreadPoolExecutor | None,
               num_batches: int | None, first: int, name: str):
    self._make = make
    self._pool = pool
    self.num_batches = num_batches  # None: endless
    self.first = first
    self.yielded = 0  # batches returned so far
    self._closed = False
    self._done = False
    self._stop = threading.Event()
    self._thread = None
    items = iter(items)
    if prefetch > 0:
      self._queue = queue.Queue(maxsize=prefetch)
      self._thread = threading.Thread(target=_produce, name=name, daemon=True,
                                      args=(make, items, self._queue, self._stop))
      self._thread.start()
    else:
      self._items = items

  @property
  def next_step(self) -> int:
    """Training step (or eval batch number) of the batch the next `next()` returns."""
    return self.first + self.yielded

  def __iter__(self):
    return self

  def __next__(self) -> Batch:
    if self._closed or self._done:
      raise StopIteration
    if self._thread is None:  # synchronous (prefetch=0)
      try:
        i = next(self._items)
      except StopIteration:
        self._done = True
        raise
      try:
        batch = self._make(i)
      except BaseException:
        self._done = True
        raise
      self.yielded += 1
      return batch
    while True:
      try:
        item = self._queue.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive() and self._queue.empty():
          self._done = True
          raise RuntimeError("the input pipeline's prefetch thread stopped without a "
                             "result (interpreter shutting down?)") from None
    if isinstance(item, _End):
      self._done = True
      self.close()
      raise StopIteration
    if isinstance(item, _Failed):
      self._done = True
      self.close()
      raise item.error
    self.yielded += 1
    return item

  def __len__(self) -> int:
    if self.num_batches is None:
      raise TypeError("an endless training iterator has no length")
    return self.num_batches

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    self._stop.set()
    if self._thread is not None:
      # Unblock a producer waiting on a full queue, then wait for it.
      while self._thread.is_alive():
        try:
          while True:
            self._queue.get_nowait()
        except queue.Empty:
          pass
        self._thread.join(timeout=0.05)
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self._stop.set()
      if self._pool is not None:
        self._pool.shutdown(wait=False, cancel_futures=True)
    except Exception:  # pylint: disable=broad-except
      pass


# --------------------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------------------
class _BatchReader:
  """Reads the examples of given dataset indices into one host batch."""

  def __init__(self, dataset, split: str, keys: Sequence[str] | None,
               layout: ProcessLayout, per_device_batch: int, num_threads: int):
    if per_device_batch < 1:
      raise ConfigError(f"per_device_batch must be >= 1, got {per_device_batch}")
    builder = open_builder(dataset)
    self.source = open_split(builder, split, raw=True)
    self.num_examples = len(self.source)
    self.where = f"{builder.data_dir}, split '{split}'"
    instructions = builder.info.splits[split].file_instructions
    self.shards = [os.fspath(fi.filename) for fi in instructions]
    self.shard_ends = np.cumsum([fi.take for fi in instructions])
    features = builder.info.features
    if keys is None:
      keys = default_keys(features)
    unknown = [k for k in keys if k not in features]
    reserved = [k for k in keys if k in _EXTRA_KEYS]
    if unknown or reserved:
      raise ConfigError(f"batch keys {unknown + reserved} are not features of "
                        f"{builder.data_dir} (features: {sorted(features)}; "
                        f"{list(_EXTRA_KEYS)} are added by the pipeline)")
    self.decoder = _Decoder(features, keys)
    if self.num_examples:
      try:
        self.decoder.check(self.source[0])
      except Exception as e:  # pylint: disable=broad-except
        raise self._read_error(np.zeros(1, np.int64), e) from e
    self.layout = layout
    self.per_device_batch = per_device_batch
    self.local_batch = layout.local_batch(per_device_batch)
    self.global_batch = layout.global_batch(per_device_batch)
    self.num_threads = max(1, int(num_threads))
    self.pool = (futures.ThreadPoolExecutor(self.num_threads, thread_name_prefix="ee_read")
                 if self.num_threads > 1 else None)

  def _read_chunk(self, indices: np.ndarray, out: Batch, offset: int) -> None:
    # Record by record: `__getitems__` starts a thread pool per call and measured ~25% more
    # CPU per tile with no gain in throughput (benchmarks/input_pipeline.py).
    source = self.source
    self.decoder.decode_into([source[i] for i in indices.tolist()], out, offset)

  def read(self, indices: np.ndarray) -> Batch:
    """Decoded examples for `indices` (a flat [L] array), stacked as [L, ...]."""
    # Read each distinct index once (evaluation padding repeats example 0).
    unique, inverse = np.unique(indices, return_inverse=True)
    if len(unique) < len(indices):
      rows = self.decoder.allocate(len(unique))
      self._checked_fill(unique, rows)
      return {k: v[inverse] for k, v in rows.items()}
    out = self.decoder.allocate(len(indices))
    self._checked_fill(indices, out)
    return out

  def _checked_fill(self, indices: np.ndarray, out: Batch) -> None:
    try:
      self._fill(indices, out)
    except (DataError, ConfigError):
      raise
    except Exception as e:  # a corrupt or truncated shard
      raise self._read_error(indices, e) from e

  def _read_error(self, indices: np.ndarray, error: Exception) -> DataError:
    """A DataError naming the shard files the examples live in."""
    shards = sorted({self.shards[i] for i in
                     np.searchsorted(self.shard_ends, indices, side="right")
                     if i < len(self.shards)})
    return DataError(f"{self.where}: cannot read examples {indices.tolist()[:8]}"
                     f"{' ...' if len(indices) > 8 else ''} from {', '.join(shards)}: "
                     f"{type(error).__name__}: {error}")

  def _fill(self, indices: np.ndarray, out: Batch) -> None:
    n = len(indices)
    chunks = min(self.num_threads, n)
    if self.pool is None or chunks <= 1:
      self._read_chunk(indices, out, 0)
      return
    bounds = np.linspace(0, n, chunks + 1).astype(int)
    jobs = [self.pool.submit(self._read_chunk, indices[a:b], out, a)
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    for job in jobs:
      job.result()

  def to_devices(self, batch: Batch) -> Batch:
    """[L, ...] -> [local_devices, per_device_batch, ...] (a view, no copy)."""
    shape = (self.layout.local_devices, self.per_device_batch)
    return {k: v.reshape(shape + v.shape[1:]) for k, v in batch.items()}


def _layout(process_index, process_count, local_devices) -> ProcessLayout:
  return ProcessLayout.from_jax(process_index, process_count, local_devices)


def train_iterator(dataset, split: str, *, per_device_batch: int, seed: int,
                   start_step: int = 0, num_steps: int | None = None,
                   keys: Sequence[str] | None = None, prefetch: int = 2,
                   num_threads: int = DEFAULT_NUM_THREADS, process_index: int | None = None,
                   process_count: int | None = None, local_devices: int | None = None,
                   indices=None) -> BatchIterator:
  """Training batches from global step `start_step` on (endless unless `num_steps`).

  `dataset`: a prepared `DatasetBuilder` or the path of a prepared dataset folder.
  `keys`: features to batch (default `default_keys`); `index` and `global_position` are
  always added. `prefetch`: batches prepared ahead in a background thread (0: none).
  `num_threads`: reader threads per batch (1: read in the prefetch thread itself).
  `process_*`, `local_devices`: default to JAX's values.
  `indices`: train on these examples of the split only (distinct, any order; see the module
  docstring for epochs over a subset smaller than one global batch); None: all of them.

  The iterator also carries `num_examples` (examples trained on), `passes_per_epoch` and
  `steps_per_epoch`.
  """
  layout = _layout(process_index, process_count, local_devices)
  reader = _BatchReader(dataset, split, keys, layout, per_device_batch, num_threads)
  n, g, l = reader.num_examples, reader.global_batch, reader.local_batch
  if n == 0:
    raise DataError(f"split '{split}' of {open_builder(dataset).data_dir} is empty")
  subset = None
  if indices is not None:
    subset = check_subset(indices, n, where=reader.where)
  m = n if subset is None else len(subset)
  passes = 1 if subset is None else subset_passes(m, g)
  spe = steps_per_epoch(m, g, passes)
  if spe == 0:
    raise ConfigError(
        f"split '{split}' has {n} examples, fewer than one global batch of {g} "
        f"(per_device_batch {per_device_batch} x {layout.process_count * layout.local_devices}"
        f" devices); lower config.data.per_device_batch")
  start = layout.process_index * l
  positions = np.arange(start, start + l, dtype=np.int32)
  cache = {}  # epoch -> permutation (only the current one is kept)

  def make(step: int) -> Batch:
    epoch, within = divmod(step, spe)
    if epoch not in cache:
      cache.clear()
      cache[epoch] = _epoch_order(n, seed, epoch, subset, passes)
    offset = within * g + start
    indices = cache[epoch][offset:offset + l]
    batch = reader.read(indices)
    batch[INDEX] = indices.copy()
    batch[GLOBAL_POSITION] = positions.copy()
    return reader.to_devices(batch)

  if start_step < 0:
    raise ConfigError(f"start_step must be >= 0, got {start_step}")
  if num_steps is None:
    steps = itertools.count(int(start_step))
  else:
    steps = range(int(start_step), int(start_step) + int(num_steps))
  iterator = BatchIterator(make, steps, prefetch=prefetch, pool=reader.pool,
                           num_batches=None if num_steps is None else int(num_steps),
                           first=int(start_step), name=f"ee_train_prefetch_{split}")
  iterator.num_examples = m
  iterator.passes_per_epoch = passes
  iterator.steps_per_epoch = spe
  return iterator


def eval_iterator(dataset, split: str, *, per_device_batch: int,
                  keys: Sequence[str] | None = None, prefetch: int = 2,
                  num_threads: int = DEFAULT_NUM_THREADS, process_index: int | None = None,
                  process_count: int | None = None,
                  local_devices: int | None = None) -> BatchIterator:
  """One pass over `split` in order; `len()` is the same on every process.

  Global batch b holds examples `[b*G, (b+1)*G)`, process p its sub-slice
  `[b*G + p*L, b*G + (p+1)*L)`. Positions past the end are padding: copies of example 0,
  with `mask` False and `index` -1.
  """
  layout = _layout(process_index, process_count, local_devices)
  reader = _BatchReader(dataset, split, keys, layout, per_device_batch, num_threads)
  n, g, l = reader.num_examples, reader.global_batch, reader.local_batch
  start = layout.process_index * l
  positions = np.arange(start, start + l, dtype=np.int32)

  def make(b: int) -> Batch:
    pos = b * g + positions.astype(np.int64)
    mask = pos < n
    batch = reader.read(np.where(mask, pos, 0))
    batch[INDEX] = np.where(mask, pos, -1)
    batch[GLOBAL_POSITION] = positions.copy()
    batch[MASK] = mask
    return reader.to_devices(batch)

  count = num_eval_batches(n, g)
  return BatchIterator(make, range(count), prefetch=prefetch, pool=reader.pool,
                       num_batches=count, first=0, name=f"ee_eval_prefetch_{split}")


def read_examples(dataset, split: str, indices, keys: Sequence[str],
                  num_threads: int = DEFAULT_NUM_THREADS) -> Batch:
  """The decoded `keys` of examples `indices` of `split`, stacked `[len(indices), ...]`, on
  host (e.g. the scene ids of a few tiles; only `keys` are decoded)."""
  reader = _BatchReader(dataset, split, keys, ProcessLayout(0, 1, 1), 1, num_threads)
  try:
    indices = np.asarray(indices, np.int64).reshape(-1)
    bad = indices[(indices < 0) | (indices >= reader.num_examples)]
    if bad.size:
      raise ConfigError(f"examples {bad[:8].tolist()} are outside {reader.where} "
                        f"({reader.num_examples} examples)")
    if not indices.size:
      return reader.decoder.allocate(0)
    return reader.read(indices)
  finally:
    if reader.pool is not None:
      reader.pool.shutdown(wait=True)


def _data_options(data_cfg) -> dict:
  from ee_jax.runtime import parallel  # pylint: disable=import-outside-toplevel  # imports JAX
  return dict(per_device_batch=parallel.device_batch(int(data_cfg.per_device_batch)),
              keys=data_cfg.get("batch_keys") or None,
              prefetch=int(data_cfg.get("prefetch", 2)),
              num_threads=int(data_cfg.get("read_threads", DEFAULT_NUM_THREADS)))


def train_iterator_from_config(config, dataset, start_step: int = 0, indices=None,
                               **overrides) -> BatchIterator:
  """`train_iterator` for `config.data` (train_split, per_device_batch, shuffle_seed,
  prefetch, and if present batch_keys / read_threads); `indices`: the training subset
  (e.g. a label fraction), None for the whole split."""
  data = config.data if hasattr(config, "data") else config
  kwargs = _data_options(data)
  kwargs.update(seed=int(data.shuffle_seed), start_step=start_step, indices=indices)
  kwargs.update(overrides)
  return train_iterator(dataset, data.train_split, **kwargs)


def eval_iterator_from_config(config, dataset, split: str | None = None,
                              **overrides) -> BatchIterator:
  """`eval_iterator` for `config.data` (split defaults to `config.data.eval_split`)."""
  data = config.data if hasattr(config, "data") else config
  kwargs = _data_options(data)
  kwargs.update(overrides)
  return eval_iterator(dataset, split or data.eval_split, **kwargs)


def batch_spec(batch: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
  """{key: (shape, dtype)} of a batch, for logs and error messages."""
  return {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()}
