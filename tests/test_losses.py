"""Dense InfoNCE: against a direct numpy implementation, masking, and across devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ee_jax.objectives import infonce, pairs
from ee_jax.runtime import parallel


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _case(b=2, h=4, w=4, e=8, n=5, seed=0):
  rng = np.random.default_rng(seed)
  z1 = _unit(rng.normal(size=(b, h, w, e))).astype(np.float32)
  z2 = _unit(z1 + 0.5 * rng.normal(size=z1.shape)).astype(np.float32)
  v1, v2 = rng.random((b, h, w)) > 0.2, rng.random((b, h, w)) > 0.2
  idx = np.stack([rng.choice(h * w, n, replace=False) for _ in range(b)]).astype(np.int32)
  return z1, z2, v1, v2, idx


def _reference(z1, z2, v1, v2, idx, tau, radius):
  """Loops over anchors: the loss written down as plainly as possible."""
  b, h, w, e = z1.shape
  both = (v1 & v2).reshape(b, -1)
  f = [z1.reshape(b, -1, e), z2.reshape(b, -1, e)]
  pix = [(i, p) for i in range(b) for p in idx[i]]
  ok = [both[i, p] for i, p in pix]
  ces, tops, poss, negs = [], [], [], []
  for a, (ia, pa) in enumerate(pix):
    if not ok[a]:
      continue
    ce_dirs = []
    for src, dst in ((0, 1), (1, 0)):
      cand = []
      for k, (ik, pk) in enumerate(pix):
        near = ik == ia and (pa // w - pk // w) ** 2 + (pa % w - pk % w) ** 2 <= radius ** 2
        if ok[k] and (k == a or not (radius > 0 and near)):
          cand.append((k, float(f[src][ia, pa] @ f[dst][ik, pk])))
      logits = np.array([c for _, c in cand]) / tau
      pos = [k for k, _ in cand].index(a)
      ce_dirs.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[pos])
      tops.append(float(np.argmax(logits) == pos))
      if src == 0:
        poss.append(cand[pos][1])
        negs += [c for k, c in cand if k != a]
    ces.append(np.mean(ce_dirs))
  return dict(loss=np.mean(ces), top1=np.mean(tops), pos_cos=np.mean(poss),
              neg_cos=np.mean(negs))


@pytest.mark.parametrize("radius", [0.0, 1.5])
def test_matches_numpy_reference(radius):
  z1, z2, v1, v2, idx = _case()
  loss, m = infonce.dense_info_nce(z1, z2, v1, v2, temperature=0.5, exclude_radius=radius,
                                  anchor_idx=idx)
  ref = _reference(z1, z2, v1, v2, idx, 0.5, radius)
  np.testing.assert_allclose(loss, ref["loss"], rtol=1e-5, atol=1e-5)
  for name in ("loss", "top1", "pos_cos", "neg_cos"):
    np.testing.assert_allclose(m[name], ref[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_identical_views_small_temperature_near_zero():
  z = _unit(np.random.default_rng(1).normal(size=(2, 6, 6, 64))).astype(np.float32)
  valid = np.ones((2, 6, 6), bool)
  loss, m = infonce.dense_info_nce(z, z, valid, valid, jax.random.key(0), num_anchors=16,
                                  temperature=0.02)
  assert float(loss) < 1e-3 and float(m["top1"]) == 1.0
  np.testing.assert_allclose(m["pos_cos"], 1.0, atol=1e-5)


def test_invalid_pixels_do_not_contribute():
  z1, z2, v1, v2, _ = _case(n=8, seed=2)
  key = jax.random.key(3)
  loss, _ = infonce.dense_info_nce(z1, z2, v1, v2, key, num_anchors=8)
  bad = ~(v1 & v2)
  z1b = np.where(bad[..., None], _unit(np.ones_like(z1)), z1)       # change invalid pixels
  loss_b, _ = infonce.dense_info_nce(z1b, z2, v1, v2, key, num_anchors=8)
  np.testing.assert_allclose(loss, loss_b, rtol=1e-6)
  # Fewer valid pixels than anchors (image 0: 3) and none at all (image 1): masked, finite.
  v = np.zeros_like(v1)
  v[0].flat[:3] = True
  loss, m = infonce.dense_info_nce(z1, z2, v, v, key, num_anchors=8)
  assert np.isfinite(loss) and float(m["anchors"]) == 1.5
  idx, mask = pairs.sample_anchors(key, jnp.asarray(v.reshape(2, -1)), 8)
  assert sorted(np.asarray(idx[0][mask[0]]).tolist()) == [0, 1, 2] and not mask[1].any()
  loss, _ = infonce.dense_info_nce(z1, z2, v & False, v & False, key, num_anchors=8)
  assert np.isfinite(loss) and float(loss) == 0.0


def test_two_devices_equal_one_device_loss_and_grads():
  rng = np.random.default_rng(4)
  b, h, w, e_in, e = 4, 4, 4, 6, 8
  x1 = rng.normal(size=(b, h, w, e_in)).astype(np.float32)
  x2 = (x1 + 0.3 * rng.normal(size=x1.shape)).astype(np.float32)
  v1, v2 = rng.random((b, h, w)) > 0.3, rng.random((b, h, w)) > 0.3
  idx = np.stack([rng.choice(h * w, 6, replace=False) for _ in range(b)]).astype(np.int32)
  weights = rng.normal(size=(e_in, e)).astype(np.float32)

  def loss_fn(wts, x1, x2, v1, v2, idx, axis_name):
    emb = lambda x: x @ wts / jnp.linalg.norm(x @ wts, axis=-1, keepdims=True)  # noqa: E731
    return infonce.dense_info_nce(emb(x1), emb(x2), v1, v2, temperature=0.3,
                                 exclude_radius=1.0, anchor_idx=idx, axis_name=axis_name)

  (loss, m), grad = jax.value_and_grad(loss_fn, has_aux=True)(
      weights, x1, x2, v1, v2, idx, None)

  def per_device(wts, x1, x2, v1, v2, idx):
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(
        wts, x1, x2, v1, v2, idx, parallel.AXIS)
    return jax.lax.pmean((loss, m, g), parallel.AXIS)

  loss2, m2, grad2 = parallel.unreplicate(parallel.pmap_step(per_device)(
      parallel.replicate(weights), *parallel.shard((x1, x2, v1, v2, idx))))
  np.testing.assert_allclose(loss2, loss, rtol=1e-5)
  for name in m:
    np.testing.assert_allclose(m2[name], m[name], rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(grad2, grad, rtol=1e-4, atol=1e-6)


def test_similarities_gradients_are_the_einsums():
  """infonce.similarities' own backward (no transposed cotangent) gives einsum's gradients:
  the same sums, so equal in float64 to rounding, and the keys' gradient equals the
  hand-written contraction sum_bn g[b, n, k] a[b, n, e]."""
  rng = np.random.default_rng(5)
  a, k, g = rng.normal(size=(3, 5, 4)), rng.normal(size=(7, 4)), rng.normal(size=(3, 5, 7))
  with jax.enable_x64(True):
    weighted = lambda fn: lambda a, k: jnp.sum(fn(a, k) * g)  # noqa: E731
    einsum = lambda a, k: jnp.einsum("bne,ke->bnk", a, k)     # noqa: E731
    expected = jax.grad(weighted(einsum), argnums=(0, 1))(a, k)
    got = jax.grad(weighted(infonce.similarities), argnums=(0, 1))(a, k)
    np.testing.assert_allclose(infonce.similarities(a, k), np.einsum("bne,ke->bnk", a, k),
                               rtol=1e-12)
  for e, o in zip(expected, got):
    assert o.dtype == np.float64
    np.testing.assert_allclose(o, e, rtol=1e-12, atol=1e-12)
  # Sums of at most 15 float64 products: rounding ~1e-15 of their O(1) size.
  np.testing.assert_allclose(got[0], np.einsum("bnk,ke->bne", g, k), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(got[1], np.einsum("bnk,bne->ke", g, a), rtol=1e-12, atol=1e-12)


def test_positive_jitter_moves_the_positive_within_the_radius():
  idx = np.array([[0, 5, 15], [10, 12, 3]], np.int32)             # 4x4 images
  moved = np.asarray(pairs.jitter_positions(jax.random.key(0), jnp.asarray(idx), 4, 4, 1))
  for a, m in zip(idx.ravel(), moved.ravel()):
    assert abs(a // 4 - m // 4) <= 1 and abs(a % 4 - m % 4) <= 1 and 0 <= m < 16
  rng = np.random.default_rng(1)
  b, h, w, e = 3, 6, 6, 8
  noisy = _unit(rng.normal(size=(b, h, w, e))).astype(np.float32)    # pixel-scale texture
  flat = np.broadcast_to(_unit(rng.normal(size=(b, 1, 1, e))), (b, h, w, e)).astype(np.float32)
  ones = np.ones((b, h, w), bool)
  metric = lambda z, r: infonce.dense_info_nce(                       # noqa: E731
      z, z, ones, ones, jax.random.key(2), num_anchors=8, positive_jitter=r)[1]["pos_cos"]
  assert float(metric(noisy, 0)) == pytest.approx(1.0, abs=1e-5)
  assert float(metric(noisy, 2)) < 0.6          # a neighbour's own texture is not the anchor's
  assert float(metric(flat, 2)) == pytest.approx(1.0, abs=1e-5)  # the shared ground still is


def test_positive_not_self_never_pairs_an_anchor_with_its_own_pixel():
  # Every non-zero offset within the radius is drawn, the zero offset never.
  idx = jnp.full((2, 4000), 5 * 10 + 5, jnp.int32)                   # centre of 10x10 images
  moved = np.asarray(pairs.jitter_positions(jax.random.key(0), idx, 10, 10, 1,
                                             not_self=True))
  offsets = set((moved // 10 - 5).ravel() * 10 + (moved % 10 - 5).ravel())
  assert offsets == {dr * 10 + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)} - {0}
  # In the loss: identical views whose pixels all differ give a positive cosine < 1 at every
  # anchor; a 1x2 image leaves each anchor one other pixel, a 1x1 image none (masked).
  rng = np.random.default_rng(0)
  z = np.broadcast_to(_unit(rng.normal(size=(1, 1, 2, 8))), (4, 1, 2, 8)).astype(np.float32)
  ones = np.ones((4, 1, 2), bool)
  m = infonce.dense_info_nce(z, z, ones, ones, jax.random.key(1), num_anchors=2,
                            positive_jitter=1, positive_not_self=True)[1]
  assert float(m["anchors"]) > 0
  assert float(m["pos_cos"]) == pytest.approx(float(np.sum(z[0, 0, 0] * z[0, 0, 1])), abs=1e-5)
  z1 = z[:, :, :1]
  m = infonce.dense_info_nce(z1, z1, ones[:, :, :1], ones[:, :, :1], jax.random.key(1),
                            num_anchors=1, positive_jitter=1, positive_not_self=True)[1]
  assert float(m["anchors"]) == 0.0
