"""Host input pipeline: shapes, determinism, resume, process slicing, eval padding, errors."""
# pylint: disable=protected-access

import gc
import shutil
import threading
import time

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ee_jax.data import contract
from ee_jax.data import pipeline
from ee_jax.errors import ConfigError, DataError
from tfds_builders.common import TileBuilder

NUM_TRAIN = 37       # not divisible by any batch size used below
NUM_VALIDATION = 11
TILE, BANDS, DATES = 8, 3, 2


class PipelineToyTiles(TileBuilder, skip_registration=True):
  """Random labelled tiles (TFDS shuffles them by key when writing, so a tile's `row`, its
  generation order, is not its index in the split)."""

  DEFAULT_PARAMS = {"seed": 0}
  LABELLED = True

  def _split_names(self):
    return ["train", "validation"]

  def _tile_layout(self):
    return {"num_dates": DATES, "tile_size": TILE, "bands": [f"B{i}" for i in range(BANDS)],
            "gsd": 10.0, "class_names": ["a", "b", "c"]}

  def _tiles(self, split):
    n = NUM_TRAIN if split == "train" else NUM_VALIDATION
    rng = np.random.default_rng([self.params["seed"], len(split)])
    for i in range(n):
      yield f"{split}-{i:03d}", {
          contract.IMAGE: rng.integers(0, 10000, (DATES, TILE, TILE, BANDS), dtype=np.uint16),
          contract.VALID: rng.random((DATES, TILE, TILE)) < 0.9,
          contract.DATES: np.array([20200101 + i, 20200201 + i], np.int32),
          contract.LABEL: rng.integers(0, 3, (TILE, TILE), dtype=np.uint8),
          contract.CRS: "EPSG:32618",
          contract.TRANSFORM: np.array([500000.0 + i, 10, 0, 4e6, 0, -10], np.float64),
          contract.SCENE_ID: f"scene-{split}-{i}",
          contract.ROW: np.int32(i),
          contract.COL: np.int32(2 * i),
      }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """(path of the prepared dataset, {split: [examples decoded by TFDS]})."""
  builder = PipelineToyTiles(data_dir=str(tmp_path_factory.mktemp("tfds")),
                             file_format="array_record")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  path = str(builder.data_dir)
  prepared = tfds.builder_from_directory(path)
  reference = {s: list(prepared.as_data_source(s)) for s in ("train", "validation")}
  return path, reference


def collect(it, n=None):
  out = []
  for i, batch in enumerate(it):
    if n is not None and i >= n:
      break
    out.append(batch)
  it.close()
  return out


def flat(batch, key):
  """[devices, per_device, ...] -> [devices * per_device, ...]."""
  v = batch[key]
  return v.reshape((-1,) + v.shape[2:])


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def assert_content_matches(batch, reference, mask=None):
  """Every example in `batch` equals the TFDS decoding of example `index`."""
  index = flat(batch, "index")
  for key in batch:
    if key in ("index", "global_position", "mask"):
      continue
    values = flat(batch, key)
    for j, i in enumerate(index):
      want = reference[i if (mask is None or mask[j]) else 0][key]
      np.testing.assert_array_equal(values[j], want, err_msg=f"{key} of example {i}")


def test_fake_devices():
  assert jax.local_device_count() == 2


def test_train_batch_shapes_dtypes_and_content(dataset):
  path, ref = dataset
  batches = collect(pipeline.train_iterator(path, "train", per_device_batch=3, seed=0,
                                            num_steps=4))
  assert len(batches) == 4
  b = batches[0]
  # Numeric keys only by default: no crs / scene_id.
  assert set(b) == {"image", "valid", "dates", "label", "transform", "row", "col", "index",
                    "global_position"}
  assert b["image"].shape == (2, 3, DATES, TILE, TILE, BANDS) and b["image"].dtype == np.uint16
  assert b["valid"].shape == (2, 3, DATES, TILE, TILE) and b["valid"].dtype == np.bool_
  assert b["dates"].shape == (2, 3, DATES) and b["dates"].dtype == np.int32
  assert b["label"].shape == (2, 3, TILE, TILE) and b["label"].dtype == np.uint8
  assert b["transform"].shape == (2, 3, 6) and b["transform"].dtype == np.float64
  assert b["row"].shape == (2, 3) and b["row"].dtype == np.int32
  assert b["index"].shape == (2, 3) and b["index"].dtype == np.int64
  np.testing.assert_array_equal(b["global_position"], np.arange(6).reshape(2, 3))
  for batch in batches:
    assert_content_matches(batch, ref["train"])


@pytest.mark.parametrize("keys", [None, ("image", "crs", "scene_id", "transform")])
def test_fast_decoding_is_active_and_exact(dataset, keys):
  path, ref = dataset
  reader = pipeline._BatchReader(path, "train", keys, pipeline.ProcessLayout(0, 1, 1), 1, 1)
  assert reader.decoder.fast is not None, "contract features should take the fast path"
  batch = reader.read(np.arange(NUM_TRAIN))
  for key, values in batch.items():
    for i in range(NUM_TRAIN):
      want = np.asarray(ref["train"][i][key])
      np.testing.assert_array_equal(values[i], want, err_msg=key)
      if want.ndim:
        assert values[i].dtype == want.dtype, key
  reader.decoder.fast = None  # TFDS's own decoding gives the same batch
  slow = reader.read(np.arange(NUM_TRAIN))
  for key, values in batch.items():
    np.testing.assert_array_equal(values, slow[key], err_msg=key)


def test_custom_keys_can_include_strings(dataset):
  path, ref = dataset
  b = collect(pipeline.train_iterator(path, "train", per_device_batch=2, seed=1, num_steps=1,
                                      keys=("image", "scene_id")))[0]
  assert set(b) == {"image", "scene_id", "index", "global_position"}
  assert b["scene_id"].shape == (2, 2)
  assert_content_matches(b, ref["train"])
  assert all(isinstance(v, bytes) for v in b["scene_id"].ravel())


def test_same_seed_same_batches_different_seed_different(dataset):
  path, _ = dataset
  kw = dict(per_device_batch=4, num_steps=12)  # G = 8: 4 steps per epoch, 3 epochs
  a = collect(pipeline.train_iterator(path, "train", seed=7, **kw))
  b = collect(pipeline.train_iterator(path, "train", seed=7, prefetch=0, num_threads=1, **kw))
  c = collect(pipeline.train_iterator(path, "train", seed=8, **kw))
  assert_batches_equal(a, b)
  assert any(not np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))


def test_epochs_are_permutations_with_remainder_dropped(dataset):
  path, _ = dataset
  g = 8
  spe = pipeline.steps_per_epoch(NUM_TRAIN, g)
  assert spe == 4
  batches = collect(pipeline.train_iterator(path, "train", per_device_batch=4, seed=3,
                                            num_steps=3 * spe))
  epochs = []
  for e in range(3):
    idx = np.concatenate([flat(b, "index") for b in batches[e * spe:(e + 1) * spe]])
    assert len(set(idx.tolist())) == spe * g  # no repeats within an epoch
    np.testing.assert_array_equal(idx, pipeline.epoch_permutation(NUM_TRAIN, 3, e)[:spe * g])
    epochs.append(idx)
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled every epoch
  for step, b in enumerate(batches):
    np.testing.assert_array_equal(flat(b, "index"),
                                  pipeline.train_indices(NUM_TRAIN, g, 3, step))


@pytest.mark.parametrize("start", [1, 3, 4, 5, 9])
def test_resume_equals_uninterrupted_stream(dataset, start):
  path, _ = dataset
  kw = dict(per_device_batch=4, seed=11)  # 4 steps per epoch: 3->4 and 8->9 cross epochs
  full = collect(pipeline.train_iterator(path, "train", num_steps=12, **kw))
  resumed = collect(pipeline.train_iterator(path, "train", start_step=start,
                                            num_steps=12 - start, **kw))
  assert_batches_equal(resumed, full[start:])
  # An endless iterator resumed at `start` gives the same first batches.
  endless = pipeline.train_iterator(path, "train", start_step=start, **kw)
  assert endless.next_step == start
  first = [next(endless) for _ in range(3)]
  assert endless.next_step == start + 3
  endless.close()
  assert_batches_equal(first, full[start:start + 3])


def test_two_processes_split_each_global_batch(dataset):
  path, ref = dataset
  kw = dict(per_device_batch=3, seed=5, num_steps=7)  # G = 12, L = 6: 3 steps per epoch
  per_proc = [collect(pipeline.train_iterator(path, "train", process_index=p, process_count=2,
                                              **kw)) for p in range(2)]
  # The same global batches as one process holding all four devices.
  single = collect(pipeline.train_iterator(path, "train", process_count=1, local_devices=4,
                                           **kw))
  for step in range(7):
    parts = [flat(per_proc[p][step], "index") for p in range(2)]
    assert not set(parts[0].tolist()) & set(parts[1].tolist())  # disjoint
    both = np.concatenate(parts)
    np.testing.assert_array_equal(both, flat(single[step], "index"))
    np.testing.assert_array_equal(both, pipeline.train_indices(NUM_TRAIN, 12, 5, step))
    for p in range(2):
      np.testing.assert_array_equal(flat(per_proc[p][step], "global_position"),
                                    np.arange(p * 6, p * 6 + 6))
      assert per_proc[p][step]["image"].shape[:2] == (2, 3)
      assert_content_matches(per_proc[p][step], ref["train"])
    for key in single[step]:
      np.testing.assert_array_equal(
          np.concatenate([flat(per_proc[p][step], key) for p in range(2)]),
          flat(single[step], key))


@pytest.mark.parametrize("process_count", [1, 2])
@pytest.mark.parametrize("per_device_batch", [1, 2, 4, 5, 9])
@pytest.mark.parametrize("split", ["train", "validation"])
def test_eval_visits_every_example_once(dataset, process_count, per_device_batch, split):
  path, ref = dataset
  n = len(ref[split])
  g = per_device_batch * 2 * process_count
  per_proc = []
  for p in range(process_count):
    it = pipeline.eval_iterator(path, split, per_device_batch=per_device_batch,
                                process_index=p, process_count=process_count,
                                num_threads=2 if p else 1)
    assert len(it) == pipeline.num_eval_batches(n, g) == -(-n // g)
    per_proc.append(collect(it))
  assert len({len(batches) for batches in per_proc}) == 1  # same count everywhere
  seen = []
  for b in range(len(per_proc[0])):
    for p in range(process_count):
      batch = per_proc[p][b]
      assert batch["image"].shape[:2] == (2, per_device_batch)
      assert batch["mask"].dtype == np.bool_
      mask, index = flat(batch, "mask"), flat(batch, "index")
      pos = b * g + p * 2 * per_device_batch + np.arange(2 * per_device_batch)
      np.testing.assert_array_equal(mask, pos < n)
      np.testing.assert_array_equal(index, np.where(pos < n, pos, -1))
      assert_content_matches(batch, ref[split], mask=mask)
      seen.extend(index[mask].tolist())
  assert seen == list(range(n))  # every example exactly once, in order


def test_eval_from_config(dataset):
  path, _ = dataset
  config = ml_collections.ConfigDict({"data": {
      "train_split": "train", "eval_split": "validation", "per_device_batch": 4,
      "shuffle_seed": 2, "prefetch": 1}})
  batches = collect(pipeline.eval_iterator_from_config(config, path))
  assert len(batches) == 2 and int(sum(b["mask"].sum() for b in batches)) == NUM_VALIDATION
  train = collect(pipeline.train_iterator_from_config(config, path, start_step=2), n=2)
  np.testing.assert_array_equal(flat(train[0], "index"),
                                pipeline.train_indices(NUM_TRAIN, 8, 2, 2))


def test_worker_exception_reaches_consumer(dataset, monkeypatch):
  path, _ = dataset
  real_read = pipeline._BatchReader.read
  calls = []

  def failing_read(self, indices):
    calls.append(1)
    if len(calls) == 3:
      raise OSError("disk on fire")
    return real_read(self, indices)

  monkeypatch.setattr(pipeline._BatchReader, "read", failing_read)
  it = pipeline.train_iterator(path, "train", per_device_batch=2, seed=0, prefetch=2)
  next(it)
  next(it)
  with pytest.raises(OSError, match="disk on fire"):
    next(it)
  with pytest.raises(StopIteration):
    next(it)
  it.close()
  assert not [t for t in threading.enumerate() if t.name.startswith("ee_train_prefetch")]


def test_close_stops_a_blocked_producer(dataset):
  path, _ = dataset
  before = set(threading.enumerate())
  with pipeline.train_iterator(path, "train", per_device_batch=1, seed=0, prefetch=1) as it:
    next(it)
    thread = it._thread
    assert thread.is_alive()  # endless stream, queue full: producer waits
  assert not thread.is_alive()
  with pytest.raises(StopIteration):
    next(it)
  it.close()  # idempotent
  leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
  assert not leftover, leftover


def test_missing_dataset_is_a_clear_error(tmp_path, dataset):
  missing = tmp_path / "no" / "such" / "dataset"
  with pytest.raises(DataError, match="no such dataset folder") as e:
    pipeline.train_iterator(str(missing), "train", per_device_batch=2, seed=0)
  assert str(missing) in str(e.value)
  with pytest.raises(DataError, match="dataset_info.json"):
    pipeline.eval_iterator(str(tmp_path), "validation", per_device_batch=2)
  path, _ = dataset
  with pytest.raises(DataError, match="no split 'test'.*train"):
    pipeline.eval_iterator(path, "test", per_device_batch=2)


def test_bad_arguments_are_clear_errors(dataset):
  path, _ = dataset
  with pytest.raises(ConfigError, match="fewer than one global batch"):
    pipeline.train_iterator(path, "train", per_device_batch=10, seed=0, process_count=2,
                            process_index=1)
  with pytest.raises(ConfigError, match="nope"):
    pipeline.train_iterator(path, "train", per_device_batch=2, seed=0, keys=("image", "nope"))
  with pytest.raises(ConfigError, match="process_index"):
    pipeline.train_iterator(path, "train", per_device_batch=2, seed=0, process_index=2,
                            process_count=2)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_reader_thread_exception_reaches_consumer(dataset, monkeypatch, num_threads):
  path, _ = dataset
  real = pipeline._BatchReader._read_chunk

  def failing_chunk(self, indices, out, offset):
    if 0 in indices.tolist():
      raise ValueError("corrupt record")
    return real(self, indices, out, offset)

  monkeypatch.setattr(pipeline._BatchReader, "_read_chunk", failing_chunk)
  it = pipeline.eval_iterator(path, "train", per_device_batch=4, num_threads=num_threads)
  with pytest.raises(ValueError, match="corrupt record"):
    collect(it)


def test_abandoned_iterator_stops_its_thread(dataset):
  path, _ = dataset
  it = pipeline.train_iterator(path, "train", per_device_batch=1, seed=0, prefetch=1)
  next(it)
  thread = it._thread
  del it
  gc.collect()
  deadline = time.monotonic() + 5
  while thread.is_alive() and time.monotonic() < deadline:
    time.sleep(0.01)
  assert not thread.is_alive()


def test_batches_feed_pmap(dataset):
  path, _ = dataset
  batch = collect(pipeline.train_iterator(path, "train", per_device_batch=3, seed=0,
                                          num_steps=1))[0]

  def per_device(b):
    return (b["image"].astype(np.float32).mean(), jax.lax.psum(b["valid"].sum(), "batch"),
            b["global_position"])

  mean, valid, position = jax.pmap(per_device, axis_name="batch")(batch)
  assert mean.shape == (2,) and valid.shape == (2,)
  assert int(valid[0]) == int(batch["valid"].sum())
  np.testing.assert_array_equal(np.asarray(position), batch["global_position"])


def test_corrupt_shard_names_the_file(dataset, tmp_path):
  path, _ = dataset
  copy = tmp_path / "corrupt"
  shutil.copytree(path, copy)
  shard = sorted(copy.glob("*-train.array_record-*"))[0]
  data = bytearray(shard.read_bytes())
  for i in range(64, len(data) - 64):
    data[i] ^= 0x5A
  shard.write_bytes(bytes(data))
  with pytest.raises(DataError, match=str(shard.name)):
    try:
      collect(pipeline.eval_iterator(str(copy), "train", per_device_batch=4))
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # Opening can already fail inside array_record; that must be a DataError too.
      pytest.fail(f"not a DataError: {type(e).__name__}: {e}")


# --------------------------------------------------------------------------------------
# Training on a subset of the split (label fractions).
# --------------------------------------------------------------------------------------
SUBSET = np.random.default_rng(0).choice(NUM_TRAIN, 13, replace=False)  # unsorted


def test_subset_epochs_permute_the_subset(dataset):
  path, ref = dataset
  g = 4  # per_device_batch 2 x 2 devices: 3 steps per epoch over 13 examples
  it = pipeline.train_iterator(path, "train", per_device_batch=2, seed=4, num_steps=9,
                               indices=SUBSET)
  assert (it.num_examples, it.passes_per_epoch, it.steps_per_epoch) == (13, 1, 3)
  batches = collect(it)
  subset = np.sort(SUBSET)
  epochs = []
  for e in range(3):
    idx = np.concatenate([flat(b, "index") for b in batches[3 * e:3 * e + 3]])
    assert len(set(idx.tolist())) == 12 and set(idx.tolist()) <= set(SUBSET.tolist())
    np.testing.assert_array_equal(idx, subset[pipeline.epoch_permutation(13, 4, e)][:12])
    epochs.append(idx)
  assert not np.array_equal(epochs[0], epochs[1])
  for step, b in enumerate(batches):
    np.testing.assert_array_equal(flat(b, "index"),
                                  pipeline.train_indices(NUM_TRAIN, g, 4, step, SUBSET))
    assert_content_matches(b, ref["train"])
  # The order of `indices` does not matter (the subset is a set).
  again = collect(pipeline.train_iterator(path, "train", per_device_batch=2, seed=4,
                                          num_steps=9, indices=subset[::-1].tolist()))
  assert_batches_equal(again, batches)


def test_subset_of_everything_is_the_plain_stream(dataset):
  path, _ = dataset
  kw = dict(per_device_batch=4, seed=9, num_steps=6)
  plain = collect(pipeline.train_iterator(path, "train", **kw))
  every = collect(pipeline.train_iterator(path, "train", indices=np.arange(NUM_TRAIN)[::-1],
                                          **kw))
  assert_batches_equal(every, plain)


def test_subset_smaller_than_a_global_batch_repeats_within_the_epoch(dataset):
  path, ref = dataset
  subset = np.array([30, 3, 17])  # M = 3, G = 8: 3 passes per epoch, 9 // 8 = 1 step
  kw = dict(per_device_batch=4, seed=2, num_steps=5, indices=subset)
  it = pipeline.train_iterator(path, "train", **kw)
  assert (it.num_examples, it.passes_per_epoch, it.steps_per_epoch) == (3, 3, 1)
  batches = collect(it)
  assert len(batches) == 5
  for step, b in enumerate(batches):
    idx = flat(b, "index")
    assert b["image"].shape[:2] == (2, 4)
    counts = np.bincount(idx, minlength=NUM_TRAIN)[np.sort(subset)]
    assert counts.sum() == 8 and set(counts.tolist()) <= {2, 3}  # 3 passes, 1 dropped
    assert set(idx.tolist()) == set(subset.tolist())
    want = np.concatenate([np.sort(subset)[pipeline.epoch_permutation(3, 2, 3 * step + j)]
                           for j in range(3)])[:8]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(idx, pipeline.train_indices(NUM_TRAIN, 8, 2, step, subset))
    assert_content_matches(b, ref["train"])
  assert len({tuple(flat(b, "index")) for b in batches}) > 1  # reshuffled every epoch
  # Deterministic, and a resumed run continues the same stream.
  assert_batches_equal(collect(pipeline.train_iterator(path, "train", prefetch=0, **kw)),
                       batches)
  resumed = collect(pipeline.train_iterator(path, "train", start_step=3,
                                            **{**kw, "num_steps": 2}))
  assert_batches_equal(resumed, batches[3:])
  # A single example fills a whole batch.
  one = collect(pipeline.train_iterator(path, "train", per_device_batch=4, seed=0,
                                        num_steps=1, indices=[5]))[0]
  np.testing.assert_array_equal(flat(one, "index"), np.full(8, 5))


@pytest.mark.parametrize("subset", [SUBSET, np.array([8, 1, 33, 20, 11])])
def test_subset_resume_and_two_processes(dataset, subset):
  path, ref = dataset
  kw = dict(per_device_batch=3, seed=5, num_steps=6, indices=subset)  # G = 12 on 4 devices
  single = collect(pipeline.train_iterator(path, "train", process_count=1, local_devices=4,
                                           **kw))
  per_proc = [collect(pipeline.train_iterator(path, "train", process_index=p, process_count=2,
                                              **kw)) for p in range(2)]
  for step in range(6):
    for key in single[step]:
      np.testing.assert_array_equal(
          np.concatenate([flat(per_proc[p][step], key) for p in range(2)]),
          flat(single[step], key), err_msg=key)
    np.testing.assert_array_equal(flat(single[step], "index"),
                                  pipeline.train_indices(NUM_TRAIN, 12, 5, step, subset))
    assert set(flat(single[step], "index").tolist()) <= set(subset.tolist())
  resumed = collect(pipeline.train_iterator(path, "train", process_count=1, local_devices=4,
                                            start_step=4, **{**kw, "num_steps": 2}))
  assert_batches_equal(resumed, single[4:])
  for batch in per_proc[1]:
    assert_content_matches(batch, ref["train"])


def test_subset_from_config(dataset):
  path, _ = dataset
  config = ml_collections.ConfigDict({"data": {
      "train_split": "train", "eval_split": "validation", "per_device_batch": 2,
      "shuffle_seed": 6, "prefetch": 1}})
  batches = collect(pipeline.train_iterator_from_config(config, path, start_step=1,
                                                         indices=SUBSET), n=2)
  for i, b in enumerate(batches):
    np.testing.assert_array_equal(flat(b, "index"),
                                  pipeline.train_indices(NUM_TRAIN, 4, 6, 1 + i, SUBSET))


@pytest.mark.parametrize("indices, match", [
    ([], "non-empty"),
    ([[1, 2]], "1-D"),
    ([3, 37], r"\[37\] are outside .*37 examples"),
    ([-1, 4], "outside"),
    ([4, 2, 4], r"distinct; repeated: \[4\]"),
    (np.array([1.5, 2.0]), "integers"),
])
def test_bad_subsets_are_clear_errors(dataset, indices, match):
  path, _ = dataset
  with pytest.raises(ConfigError, match=match):
    pipeline.train_iterator(path, "train", per_device_batch=2, seed=0, indices=indices)
  with pytest.raises(ConfigError, match=match):
    pipeline.train_indices(NUM_TRAIN, 4, 0, 0, indices)


def test_read_examples(dataset):
  path, ref = dataset
  idx = [5, 0, 5, 36]
  got = pipeline.read_examples(path, "train", idx, ("label", "scene_id"))
  assert got["label"].shape == (4, TILE, TILE)
  for j, i in enumerate(idx):
    np.testing.assert_array_equal(got["label"][j], ref["train"][i]["label"])
    assert got["scene_id"][j] == ref["train"][i]["scene_id"]
  assert pipeline.read_examples(path, "train", [], ("label",))["label"].shape == (0, TILE, TILE)
  with pytest.raises(ConfigError, match=r"\[37\] are outside"):
    pipeline.read_examples(path, "train", [37], ("label",))
