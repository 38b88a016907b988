"""benchmarks/torch_peer.py is the same network as the JAX default (so --vs_torch compares
like with like): same parameter count and, with the JAX weights copied in, the same
output. Skipped where PyTorch is not installed (it is a benchmark extra)."""

import os
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch not installed: pip install '.[torch_peer]'")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import torch_peer  # noqa: E402  pylint: disable=wrong-import-position

from configs import defaults  # noqa: E402
from ee_jax import models  # noqa: E402


def test_same_parameters_and_same_output_as_the_jax_model():
  c = defaults.get_base_config()
  model = models.build_pretrain_model(c.model, c.loss)
  b, s, ch = 2, 20, 13     # 20 -> 10 -> 5 -> 3: odd sizes exercise SAME pooling and resize
  x = np.random.default_rng(0).normal(size=(b, 1, s, s, ch)).astype(np.float32)
  params = models.init_params(model, jax.random.PRNGKey(0), x.shape, with_valid=True)
  z_jax = np.asarray(model.apply({"params": params}, x))                  # [B, H, W, E]

  peer = torch_peer.PretrainModel(ch)
  assert sum(p.numel() for p in peer.parameters()) == models.count_params(params)
  torch_peer.load_flax_params(peer, params)
  with torch.no_grad():
    z_torch = peer(torch.as_tensor(x[:, 0]).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  # Unit vectors (entries <= 1) through ~20 fp32 layers whose kernels sum in other orders:
  # each layer's relative rounding is ~ sqrt(fan-in) x 2^-24 ~ 1e-6, and GroupNorm keeps
  # activations O(1), so ~20 layers stay well under 2e-5 (seen: 1e-6). A wrong layer
  # (order, padding, pooling, resize, a norm's eps) is off by 1e-2 or more.
  np.testing.assert_allclose(z_torch, z_jax, atol=2e-5)
