"""ee_jax/models/conv.py: the matrix-product forms compute the same convolution (values and
gradients) as lax.conv_general_dilated, and 'auto' picks them where it says it does (the
kernel gradient measured faster: ee_jax/runtime/conv_choice.py); the UNet's reshape
max-pooling equals nn.max_pool."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ee_jax import models
from ee_jax.errors import ConfigError
from ee_jax.models import conv
from ee_jax.runtime import conv_choice
from ee_jax.models.unet import UNet, max_pool_2x2

U32 = 2.0 ** -24   # unit roundoff of float32


def _exact_kernel_grad(x, dy, kernel_hw, pads):
  """dW by its definition, in float64 numpy (the reference both fp32 forms are held to)."""
  xp = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
  n, ho, wo, _ = dy.shape
  return np.stack([[np.einsum("nhwc,nhwd->cd", xp[:, i:i + ho, j:j + wo], dy)
                    for j in range(kernel_hw[1])] for i in range(kernel_hw[0])])


@pytest.mark.parametrize("shape,kernel_hw,pads,c_out", [
    ((2, 9, 7, 5), (3, 3), ((1, 1), (1, 1)), 6),     # SAME, the input side shifted
    ((2, 9, 7, 6), (3, 3), ((1, 1), (1, 1)), 4),     # SAME, dy shifted (fewer out channels)
    ((3, 8, 8, 4), (5, 3), ((0, 2), (1, 0)), 3),     # uneven kernel and padding, smaller out
    ((2, 6, 5, 3), (1, 1), ((0, 0), (0, 0)), 7),     # 1x1
    ((2, 5, 4, 256), (3, 3), ((1, 1), (1, 1)), 128),  # wide: images and pixels in one product
])
def test_kernel_grad_matches_definition_and_xla(shape, kernel_hw, pads, c_out):
  rng = np.random.default_rng(0)
  x = rng.normal(size=shape).astype(np.float32)
  ho = shape[1] + sum(pads[0]) - kernel_hw[0] + 1
  wo = shape[2] + sum(pads[1]) - kernel_hw[1] + 1
  dy = rng.normal(size=(shape[0], ho, wo, c_out)).astype(np.float32)
  exact = _exact_kernel_grad(x, dy.astype(np.float64), kernel_hw, pads)
  # Each entry is a sum of K = N*Ho*Wo products: any fp32 summation order is within
  # gamma_(K+1) * sum|x||dy| of the exact value (Higham, ch. 3), XLA's as well as ours.
  k = shape[0] * ho * wo
  gamma = (k + 1) * U32 / (1 - (k + 1) * U32)
  bound = gamma * _exact_kernel_grad(np.abs(x), np.abs(dy).astype(np.float64), kernel_hw, pads)

  ours = np.asarray(conv.shifted_matmul_kernel_grad(jnp.asarray(x), jnp.asarray(dy),
                                                    kernel_hw, pads))
  w = jnp.zeros(kernel_hw + (shape[-1], c_out))
  _, vjp = jax.vjp(lambda w_: conv._lax_conv(jnp.asarray(x), w_, pads), w)
  xla = np.asarray(vjp(jnp.asarray(dy))[0])
  assert ours.shape == xla.shape == exact.shape
  assert np.all(np.abs(ours - exact) <= bound), np.max(np.abs(ours - exact) / bound)
  assert np.all(np.abs(xla - exact) <= bound)


def _unet_loss_and_grads(impl, x):
  net = UNet(widths=(4, 8), features=6, num_groups=2, conv_impl=impl,
             dtype=jnp.float64, param_dtype=jnp.float64)
  params = net.init(jax.random.PRNGKey(0), x)["params"]
  target = jnp.cos(jnp.arange(6.0))

  def loss(p):
    return jnp.mean((net.apply({"params": p}, x) - target) ** 2)

  return jax.value_and_grad(loss)(params)


def test_unet_same_values_and_gradients_in_every_impl():
  """In float64 the two forms of the same maths agree to ~1e-14 relative (every sum has at
  most 2*16*12 = 384 terms, u = 1.1e-16; 1e-10 leaves room for cancellation); a wrong
  tap, flip or transpose would be O(1) off."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 1, 16, 12, 3), jnp.float64)
    ref_loss, ref_grads = _unet_loss_and_grads("xla", x)
    loss, grads = _unet_loss_and_grads("matmul", x)
    ref_grads, grads = jax.device_get((ref_grads, grads))     # float64 numpy from here
  assert abs(float(loss) - float(ref_loss)) <= 1e-12 * abs(float(ref_loss))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads),
                          jax.tree_util.tree_leaves(ref_grads)):
    assert a.dtype == b.dtype == np.float64
    assert np.max(np.abs(a - b)) <= 1e-10 * (np.max(np.abs(b)) + 1e-300), path


def _primitives(fn, *args):
  """Names of the primitives `fn` traces to, those inside custom_vjp calls included."""
  names, todo = set(), [jax.make_jaxpr(fn)(*args).jaxpr]
  while todo:
    for eqn in todo.pop().eqns:
      names.add(str(eqn.primitive))
      todo += [v.jaxpr for v in eqn.params.values() if hasattr(v, "jaxpr")]
  return names


@pytest.fixture
def timed(monkeypatch):
  """conv_choice with scripted timings {'xla': ms, 'taps': ms}; records the shapes timed."""
  calls, ms = [], {"xla": 1.0, "taps": 0.5}

  def fake_time_forms(x_shape, w_shape, dtype, forms):
    assert set(forms) == {"xla", "taps"}
    calls.append((x_shape, w_shape))
    return ms["xla"], ms["taps"]

  monkeypatch.setattr(conv_choice, "_time_forms", fake_time_forms)
  monkeypatch.setattr(conv_choice, "_decided", {})
  monkeypatch.setattr(conv_choice, "_record_path", lambda: None)
  monkeypatch.setattr(conv, "_kernel_grad_chooser", None)
  conv_choice.install()
  return calls, ms


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' routes on the CPU backend")
def test_auto_takes_the_kernel_gradient_measured_faster(timed):
  calls, ms = timed
  pick = conv.make_conv_general_dilated("auto")
  dn = ("NHWC", "HWIO", "NHWC")
  c = 128
  big = jnp.zeros((4, 16, 16, c))          # 16 x 16 = MIN_PIXELS, 4*256*c*c = MIN_WORK
  few = jnp.zeros((3, 16, 16, c))          # under MIN_WORK
  small = jnp.zeros((256, 8, 8, c))        # plenty of work, but 8 x 8 < MIN_PIXELS
  w3, w1 = jnp.zeros((3, 3, c, c)), jnp.zeros((1, 1, c, c))
  call = lambda x, w: pick(x, w, (1, 1), "SAME", dimension_numbers=dn)  # noqa: E731
  assert conv_choice.MIN_WORK == 4 * 256 * c * c and conv_choice.MIN_PIXELS == 256
  assert "custom_vjp_call" in _primitives(call, big, w3)             # taps timed faster
  assert calls == [(big.shape, w3.shape)]
  assert "custom_vjp_call" in _primitives(call, big, w3)             # decided once
  assert len(calls) == 1
  assert "custom_vjp_call" not in _primitives(call, few, w3)     # small: XLA's, untimed
  assert "custom_vjp_call" not in _primitives(call, small, w3)
  one_by_one = _primitives(call, few, w1)                        # 1x1: a matrix product
  assert {"custom_vjp_call", "dot_general"} <= one_by_one
  assert "conv_general_dilated" not in one_by_one
  assert len(calls) == 1
  strided = lambda x, w: pick(x, w, (2, 2), "SAME", dimension_numbers=dn)  # noqa: E731
  assert "conv_general_dilated" in _primitives(strided, big, w3)   # not the plain case
  ms["taps"] = 0.95                        # faster, but within the margin: XLA's stays
  wide = jnp.zeros((4, 16, 16, 2 * c))
  assert "custom_vjp_call" not in _primitives(call, wide, jnp.zeros((3, 3, 2 * c, c)))
  assert len(calls) == 2
  xla = conv.make_conv_general_dilated("xla")
  assert "dot_general" not in _primitives(
      lambda x, w: xla(x, w, (1, 1), "SAME", dimension_numbers=dn), big, w1)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' routes on the CPU backend")
def test_auto_without_a_chooser_keeps_xla_kernel_gradients(monkeypatch):
  """models/ never times: with no chooser installed, 'auto' runs XLA's kernel gradient for
  3x3 kernels on any size (1x1 kernels are still matrix products)."""
  monkeypatch.setattr(conv, "_kernel_grad_chooser", None)
  pick = conv.make_conv_general_dilated("auto")
  call = lambda x, w: pick(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
  big = jnp.zeros((4, 16, 16, 128))
  assert "custom_vjp_call" not in _primitives(call, big, jnp.zeros((3, 3, 128, 128)))
  assert "custom_vjp_call" in _primitives(call, big, jnp.zeros((1, 1, 128, 128)))


def test_measured_choices_are_recorded_per_machine_and_reused(timed, tmp_path, monkeypatch):
  """The record survives the process (a new one reads it instead of timing) and is only
  used for the machine it was measured on."""
  calls, _ = timed
  path = tmp_path / conv_choice.RECORD
  monkeypatch.setattr(conv_choice, "_record_path", lambda: str(path))
  args = ((4, 16, 16, 128), (3, 3, 128, 128), ((1, 1), (1, 1)), jnp.float32,
          conv._kernel_grad_forms(((1, 1), (1, 1))))
  assert conv_choice.use_taps(*args)
  assert len(calls) == 1 and path.exists()
  entry = json.loads(path.read_text())[conv_choice.machine()]
  assert [v["form"] for v in entry.values()] == ["taps"]
  conv_choice._decided.clear()                  # a new process: read, not timed
  assert conv_choice.use_taps(*args) and len(calls) == 1
  conv_choice._decided.clear()
  here = conv_choice.machine()
  monkeypatch.setattr(conv_choice, "machine", lambda: "another CPU")
  assert conv_choice.use_taps(*args) and len(calls) == 2   # timed again for that machine
  assert set(json.loads(path.read_text())) == {here, "another CPU"}
  path.write_text("{not json")                  # unreadable: timed again, then rewritten
  conv_choice._decided.clear()
  assert conv_choice.use_taps(*args) and len(calls) == 3
  json.loads(path.read_text())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' times on the CPU backend")
def test_timing_runs_both_forms_while_a_step_is_traced():
  """The real measurement: two positive times, taken while an outer jit is being traced
  (as when a training step is)."""
  x_shape, w_shape, pads = (2, 16, 16, 8), (3, 3, 8, 4), ((1, 1), (1, 1))
  forms = conv._kernel_grad_forms(pads)
  seen = []

  def traced(v):
    seen.append(conv_choice._time_forms(x_shape, w_shape, jnp.float32, forms))
    return v + 1

  jax.jit(traced)(jnp.zeros(()))
  (xla_ms, taps_ms), = seen
  assert 0 < xla_ms < 60e3 and 0 < taps_ms < 60e3


def test_unknown_conv_impl_is_a_config_error():
  c = models.default_config()
  c.conv_impl = "fast"
  with pytest.raises(ConfigError, match="config.model.conv_impl: unknown 'fast'"):
    models.build_backbone(c)


def test_matmul_impl_falls_back_where_it_does_not_apply():
  """Grouped or dilated convolutions are left to lax (same result as lax itself)."""
  pick = conv.make_conv_general_dilated("matmul")
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 10, 10, 4))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
  kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2,
            rhs_dilation=(2, 2))
  np.testing.assert_array_equal(pick(x, w, (1, 1), "SAME", **kw),
                                lax.conv_general_dilated(x, w, (1, 1), "SAME", **kw))


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (2, 3, 8, 4, 2), (1, 7, 6, 2), (1, 6, 5, 2)])
def test_max_pool_2x2_matches_nn_max_pool(shape):
  """Values and gradients equal to nn.max_pool's (SAME, ceil on odd sizes), ties included:
  the input has many (zeros after the ReLU, and repeated positive values)."""
  x = jnp.round(jax.random.normal(jax.random.PRNGKey(0), shape) * 2) / 2   # many ties
  window = (1,) * (len(shape) - 4) + (2, 2)
  ref = lambda v: nn.max_pool(jax.nn.relu(v), window, strides=window, padding="SAME")  # noqa: E731
  ours = lambda v: max_pool_2x2(jax.nn.relu(v))  # noqa: E731
  np.testing.assert_array_equal(ours(x), ref(x))
  cot = jax.random.normal(jax.random.PRNGKey(1), ref(x).shape)
  grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * cot))(x)  # noqa: E731
  np.testing.assert_array_equal(grad(ours), grad(ref))
