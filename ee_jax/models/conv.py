"""2D convolution with the maths of `lax.conv_general_dilated` in forms XLA CPU can compute
faster: 1x1 convolutions as matrix products, and the kernel gradient of the others as one
matrix product per kernel tap.

Why: XLA CPU computes a convolution's kernel gradient as a convolution whose window is the
whole image, with the batch as the contraction; on a 2-core AMD EPYC (AVX2) that took 4-40x
as long as the forward pass on the default UNet's shapes and most of the CPU training step
(on a 2-core AVX-512 Xeon, where XLA runs it through YNNPACK, 2-4x: which form wins depends
on the CPU, hence 'auto' measures; benchmarks/conv_grads.py, docs/perf_log.md). The same
sum, dW[i, j] = sum over (n, h, w) of x_padded[n, h + i, w + j] (outer) dy[n, h, w], is one
batched matrix product per kernel tap (batch = image, contraction = the image's pixels),
summed over images: 3-10x faster on that EPYC. A 1x1 convolution is a matrix product over
channels, and XLA CPU's convolution kernels run it (forward and both gradients) 2-10x
slower than its GEMM does (on both CPUs); its kernel gradient is batched over images like
the others (one GEMM over all pixels at once has too few output blocks to keep the cores
busy). The maths is unchanged (same sums in another order: fp32 rounding only).

`impl` (config.model.conv_impl) picks: 'xla' (lax.conv_general_dilated as is), 'matmul'
(the products above wherever the convolution is the plain stride-1 NHWC/HWIO case; the
forward and input gradient of kernels larger than 1x1 stay XLA's), or 'auto' (on the CPU
backend 1x1 convolutions as matrix products and, for larger kernels, the kernel gradient
the installed chooser picks for the layer's shape; 'xla' on GPU and TPU, which run cuDNN's
or their own convolutions).

Which kernel gradient is faster is a fact about the machine, not the model: the runtime
installs its chooser (`set_kernel_grad_chooser`; ee_jax/runtime/conv_choice.py times both
forms per layer shape) before training, so this module never imports the timing code.
Without a chooser, 'auto' keeps XLA's kernel gradient for kernels larger than 1x1.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("auto", "xla", "matmul")
# Kernel gradients of layers this wide (C_in * C_out) are one product over all images'
# pixels; narrower ones a batched product per image, then a sum (measured on the default
# UNet's layers: the joint product won for 256->128 and lost for 128->128 and narrower).
JOINT_MIN_CHANNELS = 256 * 128
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))

# 'auto' on CPU: fn(x_shape, w_shape, pads, dtype, forms) -> True for the tap products,
# given forms = {'xla': fn, 'taps': fn} to time; None = XLA's kernel gradient.
_kernel_grad_chooser = None


def set_kernel_grad_chooser(chooser) -> None:
  """Installs how 'auto' picks a kernel gradient on CPU (None: XLA's own)."""
  global _kernel_grad_chooser
  _kernel_grad_chooser = chooser


def _lax_conv(x, w, pads):
  return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


def _forward(x, w, pads):
  """The convolution's value: a matrix product over channels for an unpadded 1x1 kernel,
  XLA's convolution otherwise."""
  if w.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
    return lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())))
  return _lax_conv(x, w, pads)


def shifted_matmul_kernel_grad(x, dy, kernel_hw, pads):
  """dW [kh, kw, C_in, C_out] of a stride-1 NHWC convolution with padding `pads`, from its
  input x [N, H, W, C_in] and output cotangent dy [N, Ho, Wo, C_out].

  Per tap (i, j): dW[i, j] = sum over n of x_tap[n]^T @ dy[n] (pixels as the contraction,
  at least fp32 accumulation), where x_tap is the padded input shifted by (i, j). Narrow
  layers make it a batched product over images, then a sum (one product over all images'
  pixels would have too few output blocks to keep the cores busy); layers with
  C_in * C_out >= JOINT_MIN_CHANNELS contract images and pixels in one product. Shifting
  copies, so the side with fewer channels is shifted: x's window cropped to dy's frame, or
  dy placed (zero-padded) in x's padded frame at offset (i, j), which gives the same sum."""
  (kh, kw), (n, ho, wo, c_out), c_in = kernel_hw, dy.shape, x.shape[-1]
  xp = jnp.pad(x, ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
  hp, wp = xp.shape[1:3]
  joint = c_in * c_out >= JOINT_MIN_CHANNELS
  contract = (((0, 1), (0, 1)), ((), ())) if joint else (((1,), (1,)), ((0,), (0,)))
  acc = jnp.promote_types(dy.dtype, jnp.float32)   # bf16 sums in fp32, fp64 stays fp64
  taps = []
  for i in range(kh):
    for j in range(kw):
      if c_out < c_in:
        lhs = xp.reshape(n, hp * wp, c_in)
        rhs = jnp.pad(dy, ((0, 0), (i, hp - ho - i), (j, wp - wo - j), (0, 0)))
        rhs = rhs.reshape(n, hp * wp, c_out)
      else:
        lhs = lax.slice(xp, (0, i, j, 0), (n, i + ho, j + wo, c_in)).reshape(n, ho * wo, c_in)
        rhs = dy.reshape(n, ho * wo, c_out)
      product = lax.dot_general(lhs, rhs, contract, preferred_element_type=acc)
      taps.append(product if joint else product.sum(axis=0))
  return jnp.stack(taps).reshape(kh, kw, c_in, c_out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_shifted_matmul_grad(x, w, pads):
  """Stride-1 NHWC/HWIO convolution (padding `pads`, ((top, bottom), (left, right))) whose
  kernel gradient is `shifted_matmul_kernel_grad`; value and input gradient are
  `_forward`'s (a matrix product for 1x1, XLA's convolution otherwise)."""
  return _forward(x, w, pads)


def _fwd(x, w, pads):
  return _forward(x, w, pads), (x, w)


def _bwd(pads, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x_: _forward(x_, w, pads), x)
  (dx,) = input_vjp(dy)
  dw = shifted_matmul_kernel_grad(x, dy, w.shape[:2], pads).astype(w.dtype)
  return dx, dw


conv_shifted_matmul_grad.defvjp(_fwd, _bwd)


def _plain_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                dimension_numbers, feature_group_count):
  """The explicit non-negative pads when this is the plain stride-1 2D NHWC/HWIO case the
  tap products handle, else None."""
  if lhs.ndim != 4 or feature_group_count != 1 or tuple(window_strides) != (1, 1):
    return None
  if any(d not in (None, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
    return None
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  if dn != _NHWC:
    return None
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  return pads if all(p >= 0 for pair in pads for p in pair) else None


def _kernel_grad_forms(pads):
  """The two kernel gradients 'auto' chooses between, as functions of (x, w, dy)."""
  def xla(x, w, dy):
    return jax.vjp(lambda w_: _lax_conv(x, w_, pads), w)[1](dy)[0]

  def taps(x, w, dy):
    return shifted_matmul_kernel_grad(x, dy, w.shape[:2], pads).astype(w.dtype)

  return {"xla": xla, "taps": taps}


def _xla_is_faster(lhs, rhs, pads) -> bool:
  """'auto': whether XLA's own kernel gradient is the one to use for this convolution
  (the installed chooser decides; none installed: XLA's). 1x1 kernels always take the
  matrix product."""
  if rhs.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
    return False
  if _kernel_grad_chooser is None:
    return True
  return not _kernel_grad_chooser(tuple(lhs.shape), tuple(rhs.shape), pads, lhs.dtype,
                                  _kernel_grad_forms(pads))


def make_conv_general_dilated(impl: str):
  """A drop-in for `lax.conv_general_dilated` (flax `nn.Conv(conv_general_dilated=...)`)
  computed the way `impl` names (module docstring)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"conv_impl: unknown '{impl}'; known: {CONV_IMPLS}")

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                           precision=None, **kwargs):
    use_products = impl == "matmul" or (impl == "auto" and jax.default_backend() == "cpu")
    pads = None
    if use_products and precision is None and not kwargs:
      pads = _plain_pads(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count)
    if pads is None or (impl == "auto" and _xla_is_faster(lhs, rhs, pads)):
      return lax.conv_general_dilated(
          lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
          rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
          feature_group_count=feature_group_count, precision=precision, **kwargs)
    return conv_shifted_matmul_grad(lhs, rhs, pads)

  return conv_general_dilated


def conv(features: int, kernel, impl: str, dtype: Any, param_dtype: Any,
         name=None) -> nn.Conv:
  """`nn.Conv` (same params, same maths) computed the way `impl` names."""
  return nn.Conv(features, tuple(kernel), dtype=dtype, param_dtype=param_dtype, name=name,
                 conv_general_dilated=make_conv_general_dilated(impl))
