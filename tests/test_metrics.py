"""Segmentation metrics against hand-computed confusion matrices, and across 2 fake devices."""

import functools
import json

import jax
import numpy as np
import pytest

from ee_jax import metrics

IGNORE = 255

# 6 pixels, one ignored. (truth, pred): (0,0) (0,1) (1,1) (1,1) ignore (2,0).
LABEL = np.array([[0, 0, 1], [1, IGNORE, 2]], np.uint8)
PRED = np.array([[0, 1, 1], [1, 0, 0]], np.int32)
CM = np.array([[1, 1, 0],
               [0, 2, 0],
               [1, 0, 0]])


def cm_of(pred, label, mask=None, k=3, **kw):
  return np.asarray(metrics.confusion_matrix(pred, label, mask, k, IGNORE, **kw))


def reference_cm(pred, label, valid, k):
  """Brute force: loop over pixels."""
  out = np.zeros((k, k), np.int64)
  for p, t, v in zip(pred.ravel(), label.ravel(), valid.ravel()):
    if v and t != IGNORE:
      out[t, p] += 1
  return out


@pytest.mark.parametrize("method", ["bincount", "matmul"])
def test_hand_computed_matrix_with_ignore_pixels(method):
  cm = cm_of(PRED, LABEL, method=method)
  assert cm.dtype == np.int32 and cm.shape == (3, 3)
  np.testing.assert_array_equal(cm, CM)
  # A batch axis and jit give the same.
  jitted = jax.jit(functools.partial(metrics.confusion_matrix, num_classes=3,
                                     ignore_index=IGNORE, method=method))
  np.testing.assert_array_equal(jitted(PRED[None], LABEL[None]), CM)


def test_scores_of_hand_computed_matrix():
  s = metrics.segmentation_scores(CM, ["water", "forest", "urban"])
  # IoU = TP / (TP + FP + FN): water 1/(2+2-1), forest 2/(2+3-2), urban 0/(1+0-0).
  assert s["per_class_iou"] == pytest.approx({"water": 1 / 3, "forest": 2 / 3, "urban": 0.0})
  assert s["miou"] == pytest.approx(1 / 3)
  assert s["oa"] == pytest.approx(3 / 5)
  assert s["num_pixels"] == 5
  assert s["confusion_matrix"] == CM.tolist()
  assert s["per_class_pixels"] == {"water": 2, "forest": 2, "urban": 1}
  assert s["class_names"] == ["water", "forest", "urban"]
  json.dumps(s, allow_nan=False)


def test_absent_class_is_excluded_from_the_mean():
  # K = 4: class 3 ("snow") never occurs in truth nor prediction.
  cm = cm_of(PRED, LABEL, k=4)
  np.testing.assert_array_equal(cm[:3, :3], CM)
  assert not cm[3].any() and not cm[:, 3].any()
  s = metrics.segmentation_scores(cm, ["water", "forest", "urban", "snow"])
  assert s["per_class_iou"]["snow"] is None
  assert s["miou"] == pytest.approx(1 / 3)  # not (1/3 + 2/3 + 0 + 0) / 4, nor ... + 1) / 4
  json.dumps(s, allow_nan=False)


def test_class_only_predicted_counts_as_zero():
  # Class 2 never in truth but predicted once: IoU 0, part of the mean.
  cm = np.array([[3, 0, 1], [0, 2, 0], [0, 0, 0]])
  s = metrics.segmentation_scores(cm)
  assert s["per_class_iou"] == pytest.approx({"0": 3 / 4, "1": 1.0, "2": 0.0})
  assert s["miou"] == pytest.approx((3 / 4 + 1 + 0) / 3)
  assert s["oa"] == pytest.approx(5 / 6)


def test_nothing_counted_gives_none_not_nan():
  cm = cm_of(PRED, np.full_like(LABEL, IGNORE))
  assert not cm.any()
  s = metrics.segmentation_scores(cm, ["a", "b", "c"])
  assert s["miou"] is None and s["oa"] is None and s["kappa"] is None and s["num_pixels"] == 0
  assert set(s["per_class_iou"].values()) == {None} == set(s["per_class_f1"].values())
  json.dumps(s, allow_nan=False)


def test_kappa_and_f1_by_hand_with_an_absent_class():
  # Rows truth, columns prediction; class 3 absent from both. N = 16, trace 12.
  cm = np.array([[5, 1, 0, 0],
                 [2, 3, 1, 0],
                 [0, 0, 4, 0],
                 [0, 0, 0, 0]])
  s = metrics.segmentation_scores(cm)
  # po = 12/16; truth (6, 6, 4, 0), predicted (7, 4, 5, 0): pe = (42 + 24 + 20) / 256.
  po, pe = 12 / 16, 86 / 256
  assert s["kappa"] == pytest.approx((po - pe) / (1 - pe)) and s["kappa"] == pytest.approx(53 / 85)
  # F1 = 2TP / (2TP + FP + FN): 0: TP 5, FP 2, FN 1; 1: TP 3, FP 1, FN 3; 2: TP 4, FP 1, FN 0.
  assert s["per_class_f1"]["3"] is None  # absent from truth and prediction: no score
  assert {c: s["per_class_f1"][c] for c in "012"} == pytest.approx(
      {"0": 10 / 13, "1": 6 / 10, "2": 8 / 9})
  for c in "012":  # F1 = 2 IoU / (1 + IoU), a second route to the same numbers
    iou = s["per_class_iou"][c]
    assert s["per_class_f1"][c] == pytest.approx(2 * iou / (1 + iou))
  json.dumps(s, allow_nan=False)


def test_kappa_perfect_worse_than_chance_and_undefined():
  assert metrics.segmentation_scores(np.diag([3, 4, 5]))["kappa"] == 1.0
  # Always wrong: po = 0, pe = (3*2 + 2*3) / 25 -> kappa = -12/25 / (13/25) = -12/13.
  assert metrics.segmentation_scores([[0, 3], [2, 0]])["kappa"] == pytest.approx(-12 / 13)
  # Prediction independent of truth (pe = po): kappa 0 although OA is 1/2.
  s = metrics.segmentation_scores([[2, 2], [2, 2]])
  assert s["kappa"] == 0.0 and s["oa"] == 0.5
  # One class in truth and prediction: pe = 1, kappa 0/0 -> None; F1 of the other None.
  s = metrics.segmentation_scores([[7, 0], [0, 0]])
  assert s["kappa"] is None and s["per_class_f1"] == {"0": 1.0, "1": None} and s["oa"] == 1.0
  json.dumps(s, allow_nan=False)


def test_kappa_of_an_evaluation_whose_chance_products_overflow_int64():
  big = 4 * 10 ** 9  # 8e9 pixels (a large evaluation): truth_k * pred_k ~ 1.6e19 > 2^63
  cm = np.array([[big, 1], [0, big]], np.int64)
  n = 2 * big + 1
  chance = big * (big + 1) + (big + 1) * big  # truth (big+1, big), predicted (big, big+1)
  want = (2 * big * n - chance) / (n * n - chance)
  assert metrics.segmentation_scores(cm)["kappa"] == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("method", ["bincount", "matmul"])
def test_masked_padding_examples_do_not_count(method):
  # Example 1 is padding (a copy of example 0, as the eval iterator pads): mask False.
  pred = np.stack([PRED, PRED])
  label = np.stack([LABEL, LABEL])
  np.testing.assert_array_equal(cm_of(pred, label, np.array([True, False]), method=method), CM)
  np.testing.assert_array_equal(cm_of(pred, label, np.array([True, True]), method=method),
                                2 * CM)
  np.testing.assert_array_equal(cm_of(pred, label, np.array([False, False]), method=method),
                                np.zeros((3, 3)))
  # A per-pixel mask: drop pixel (0, 1) of example 0, i.e. its (truth 0, pred 1).
  pixel = np.ones(label.shape, bool)
  pixel[0, 0, 1] = False
  pixel[1] = False
  want = CM.copy()
  want[0, 1] -= 1
  np.testing.assert_array_equal(cm_of(pred, label, pixel, method=method), want)


def test_out_of_range_labels_and_predictions_do_not_count():
  label = np.array([0, 1, 7, 2, 1], np.uint8)  # 7: not a class, not the ignore value
  pred = np.array([0, 1, 1, 9, -1], np.int32)  # 9, -1: not classes
  np.testing.assert_array_equal(cm_of(pred, label),
                                [[1, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_no_ignore_index():
  label = np.array([0, 1, 2], np.int32)
  cm = np.asarray(metrics.confusion_matrix(label, label, None, 3, ignore_index=None))
  np.testing.assert_array_equal(cm, np.eye(3))


def test_random_against_brute_force_both_methods():
  rng = np.random.default_rng(0)
  k = 5
  label = rng.integers(0, k, (3, 7, 9)).astype(np.uint8)
  label[rng.random(label.shape) < 0.2] = IGNORE
  pred = rng.integers(0, k, label.shape)
  mask = np.array([True, False, True])
  want = reference_cm(pred, label, np.broadcast_to(mask[:, None, None], label.shape), k)
  for method in ("bincount", "matmul"):
    np.testing.assert_array_equal(cm_of(pred, label, mask, k=k, method=method), want)


def test_bad_arguments():
  with pytest.raises(ValueError, match="same shape"):
    metrics.confusion_matrix(PRED[:1], LABEL, None, 3)
  with pytest.raises(ValueError, match="method"):
    metrics.confusion_matrix(PRED, LABEL, None, 3, method="scatter")
  with pytest.raises(ValueError, match="square"):
    metrics.segmentation_scores(np.zeros((2, 3)))
  with pytest.raises(ValueError, match="class names"):
    metrics.segmentation_scores(CM, ["a", "b"])
  with pytest.raises(ValueError, match="negative"):
    metrics.segmentation_scores(-CM)


@pytest.mark.parametrize("per_device_batch", [1, 2, 3])
def test_two_devices_with_padding_equal_one_device(per_device_batch):
  """5 examples split over 2 devices as the eval iterator does (last global batch padded
  with copies of example 0, mask False): psum'd and summed over batches, the matrix equals
  the one of the 5 examples on one device."""
  assert jax.local_device_count() == 2
  k, n = 4, 5
  rng = np.random.default_rng(per_device_batch)
  label = rng.integers(0, k, (n, 6, 6)).astype(np.uint8)
  label[rng.random(label.shape) < 0.25] = IGNORE
  pred = rng.integers(0, k, label.shape).astype(np.int32)
  single = cm_of(pred, label, k=k)
  np.testing.assert_array_equal(single, reference_cm(pred, label, np.ones(label.shape), k))

  step = jax.pmap(lambda p, t, m: metrics.psum_confusion(
      metrics.confusion_matrix(p, t, m, k, IGNORE), "batch"), axis_name="batch")
  g = 2 * per_device_batch
  total = np.zeros((k, k), np.int64)
  for b in range(-(-n // g)):
    pos = b * g + np.arange(g)
    mask = pos < n
    idx = np.where(mask, pos, 0)
    shape = (2, per_device_batch)
    out = step(pred[idx].reshape(shape + pred.shape[1:]),
               label[idx].reshape(shape + label.shape[1:]), mask.reshape(shape))
    out = np.asarray(out)
    np.testing.assert_array_equal(out[0], out[1])  # every device holds the global matrix
    total += out[0]
  np.testing.assert_array_equal(total, single)
  assert total.sum() == (label != IGNORE).sum()
  assert metrics.segmentation_scores(total) == metrics.segmentation_scores(single)
