"""A backbone's per-pixel embedding as extra features for the classical classifiers.

With few labels the cheapest use of a pre-trained model may be no fine-tuning at all: its
frozen per-pixel embedding, and the embedding's 3x3 mean, beside the baselines' own
per-pixel features, fed to the same classifier (Presto's evaluations do this with trees).
The study runs it as `study.embedding_baselines` (ee_jax/study.py) and the probe as
`SOURCE+pixels` (benchmarks/feature_probe.py); both use this module, so they agree.
"""

import numpy as np

from ee_jax.baselines.features import smoothed


def embedder(model_cfg, params, mean, std, batch: int = 32, layer: str = ""):
  """embed(image, valid) -> backbone output [N, H, W, D] float32 for uint16 tiles, in
  batches of `batch`, the input normalised with `mean`/`std` (the backbone's own
  statistics); compiled once per tile shape, however many times it is called.

  `layer` (e.g. 'enc0', 'dec1'): that UNet block's output instead, resized to the tile's
  H, W (bilinear) when coarser: where along the network land cover gets lost. Several,
  comma-separated, are concatenated in that order (a hypercolumn; 'output' names the
  backbone's output among them, e.g. 'output,dec1,dec2')."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from ee_jax import models  # pylint: disable=import-outside-toplevel
  from ee_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from ee_jax.train.finetune import prepare_inputs  # pylint: disable=import-outside-toplevel
  backbone = models.build_backbone(model_cfg)

  names = layer.split(",") if layer else []

  def forward(p, im, v):
    inputs = prepare_inputs(im, v, mean, std)
    if not names:
      return backbone.apply({"params": p}, *inputs)
    out, state = backbone.apply({"params": p}, *inputs, capture_intermediates=True)
    levels = state["intermediates"]
    parts = []
    for name in names:
      if name == "output":
        parts.append(out)
        continue
      if name not in levels:
        known = sorted(k for k in levels if k != "__call__")
        raise ConfigError(f"--layer: the backbone has no block '{name}'; it has {known}")
      f = levels[name]["__call__"][0]
      parts.append(jax.image.resize(f, f.shape[:1] + im.shape[2:4] + f.shape[3:], "bilinear"))
    return jnp.concatenate([f.astype(jnp.float32) for f in parts], -1)

  apply = jax.jit(forward)

  def embed(image, valid):
    return np.concatenate([np.asarray(apply(params, image[i:i + batch], valid[i:i + batch]),
                                      np.float32)
                           for i in range(0, len(image), batch)])
  return embed


def backbone_features(model_cfg, params, image, valid, mean, std, batch: int = 32,
                      layer: str = ""):
  """embedder(...)(image, valid) in one call: [N, H, W, D]."""
  return embedder(model_cfg, params, mean, std, batch, layer)(image, valid)


def beside_pixels(features, pixels):
  """[N, H, W, P + 2D]: the baselines' per-pixel view `pixels` [N, H, W, P], then an
  embedding `features` [N, H, W, D] and its 3x3 mean (the view's own neighbourhood term)."""
  return np.concatenate([pixels, features, smoothed(features)], -1).astype(np.float32)


def from_checkpoint(path: str, bands, dataset_dir: str, layer: str = ""):
  """embed(image, valid) -> [N, H, W, D] of the backbone saved in the checkpoint `path`
  (a pre-training or fine-tuning workdir; `layer`: as backbone_features), normalising with
  its saved statistics; a band list other than `bands` (the dataset's) is refused by
  checkpoints.check_bands."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ee_jax import checkpoints  # pylint: disable=import-outside-toplevel
  params, meta = checkpoints.load_params(path)
  checkpoints.check_bands(meta, {"bands": list(bands)}, path, dataset_dir)
  model_cfg = ml_collections.ConfigDict(meta["model"])
  mean, std = np.asarray(meta["mean"]), np.asarray(meta["std"])
  return embedder(model_cfg, params["backbone"], mean, std, layer=layer)
