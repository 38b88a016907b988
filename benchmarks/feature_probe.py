"""Linear probe of frozen per-pixel features: how much land cover a representation holds.

A fast check of pre-training, minutes instead of a study: features of the labelled train
tiles (a label fraction, as the study chooses them) -> a softmax classifier fitted full
batch -> test mIoU and OA. Retrieval accuracy alone can be high for features that hold no
land cover at all (a shortcut); this catches it. Compare against `raw` (the normalised
input pixels, all dates' bands) and `random` (a randomly initialised backbone).

  python benchmarks/feature_probe.py --config=configs/finetune_synthetic.py \\
      --sources=raw,random,/tmp/pre_syn [--fractions=0.015625,0.25] [--data_dir=...]

`--classifier=lightgbm` fits the study's gradient-boosted trees instead of the softmax
regression (ee_jax/baselines; any name there), on a seeded sample of at most 10,000 pixels a
class, as the study's classical baselines. With it, `pixels` is the baseline's own per-pixel
view (normalised bands, their 3x3 mean and, for the trees, the normalised-difference
indices) and `SOURCE+pixels` a source's features and their 3x3 mean beside that view: the
embedding used as extra features by a classical classifier (as Presto's evaluations do),
against the same classifier without it.

`--clusters=K` adds a second reading per source: k-means (K centres) on the features of
all train tiles, labels unused, each cluster then named by the majority class of the
label fraction's pixels in it. It asks whether land cover is the dominant structure of a
representation, which is what pulling alike pixels together without labels can find.

A source is a pre-training or fine-tuning workdir (or checkpoint folder), `raw`, `raw3x3`
(raw averaged over 3x3 pixels) or `random` (the config's model); any of them followed by
`+input` has the normalised input and its 3x3 mean beside it (what the segmentation head
sees with `model.head_input='raw3x3'`; `raw+input` is the linear baseline's view).
`--layer=enc0` probes a block inside the backbone instead of its output,
`--layer=output,dec1` several side by side. The dataset comes from the config and must be
built; `--builder KEY=VALUE` (repeatable) probes one built with other builder parameters, e.g.
`--data_dir=/tmp/notex --builder texture_std=0.0`.
"""

import argparse
import ast
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ee_jax import baselines, metrics, models  # noqa: E402
from ee_jax.baselines.embedding import (beside_pixels, embedder,  # noqa: E402
                                        from_checkpoint)
from ee_jax.baselines.features import (counted, pixel_features, raw_features,  # noqa: E402
                                       smoothed)
from ee_jax.baselines.linear import fit_probe  # noqa: E402
from ee_jax.baselines.runner import sample_pixels  # noqa: E402
from ee_jax.data import contract, datasets, label_fractions, pipeline  # noqa: E402
from ee_jax.study import load_config_file  # noqa: E402

KEYS = (contract.IMAGE, contract.VALID, contract.LABEL)
BESIDE = "+input"   # a source's features with the input and its 3x3 mean beside them
PIXELS = "pixels"   # the classical baselines' per-pixel view; `SOURCE+pixels`: beside it


def with_input(features, image, valid, mean, std):
  """features [N, H, W, D] with the normalised input and its 3x3 mean beside them: what the
  segmentation head sees with `model.head_input='raw3x3'`, in its order."""
  return np.concatenate([features, pixel_features(image, valid, mean, std, [])], -1)


def fit_classifier(name: str, features, labels, keep, num_classes: int, seed: int):
  """predict(features [..., D]) -> classes [n] of the study's classifier `name`, fitted on a
  seeded sample of the pixels `keep` (at most runner.MAX_PIXELS_PER_CLASS a class), as the
  study's baseline `name` samples them."""
  classifier = baselines.get(name)
  x, y = sample_pixels([(features, labels, keep)], seed)
  predict = classifier.fit(x, y, num_classes, seed)
  return lambda f: predict(f.reshape(-1, f.shape[-1]))


def fit_clusters(pool, features, labels, num_clusters, num_classes, ignore_index,
                 seed=0, iterations=30, sample=40000):
  """k-means on standardised `pool` features [..., D] (no labels), clusters named by the
  majority of `labels` among `features`' pixels (a cluster no labelled pixel falls in takes
  the most frequent class) -> predict(features)."""
  d = pool.shape[-1]
  rng = np.random.default_rng(seed)
  x = pool.reshape(-1, d)
  x = x[rng.choice(len(x), min(sample, len(x)), replace=False)]
  mu, sd = x.mean(0), x.std(0) + 1e-6
  x = jnp.asarray((x - mu) / sd)
  centres = x[rng.choice(x.shape[0], num_clusters, replace=False)]

  @jax.jit
  def nearest(c, v):
    return jnp.argmin(jnp.sum(c ** 2, -1)[None] - 2 * v @ c.T, axis=-1)

  for _ in range(iterations):
    onehot = jax.nn.one_hot(nearest(centres, x), num_clusters)
    counts = onehot.sum(0)[:, None]
    centres = jnp.where(counts > 0, onehot.T @ x / jnp.maximum(counts, 1), centres)

  def assign(f):
    return np.asarray(nearest(centres, jnp.asarray((f.reshape(-1, d) - mu) / sd)))

  y = labels.reshape(-1)
  keep = y != ignore_index
  votes = np.zeros((num_clusters, num_classes), np.int64)
  np.add.at(votes, (assign(features)[keep], y[keep].astype(np.int64)), 1)
  named = np.where(votes.sum(1) > 0, votes.argmax(1), votes.sum(0).argmax())
  return lambda f: named[assign(f)]


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/finetune_synthetic.py")
  ap.add_argument("--data_dir", default="")
  ap.add_argument("--sources", default="raw,random")
  ap.add_argument("--fractions", default="0.015625,0.25")
  ap.add_argument("--seed", type=int, default=0, help="label-fraction seed")
  ap.add_argument("--steps", type=int, default=300, help="probe optimisation steps")
  ap.add_argument("--classifier", default="", help="a classical baseline's classifier "
                  "(ee_jax/baselines: linear, lightgbm) on a pixel sample instead of the "
                  "full-batch softmax probe")
  ap.add_argument("--clusters", type=int, default=0,
                  help="also k-means with this many centres on all train tiles (no labels), "
                       "clusters named by the labelled pixels; 0: off")
  ap.add_argument("--layer", default="", help="probe this backbone block (e.g. enc0, dec1), "
                  "or several side by side (e.g. output,dec1,dec2); default: the output")
  ap.add_argument("--builder", action="append", default=[], metavar="KEY=VALUE",
                  help="override config.data.builder.KEY (a Python literal); repeatable")
  args = ap.parse_args(argv)
  uses_indices = (bool(args.classifier)
                  and baselines.get(args.classifier, "--classifier").USES_INDICES)
  path, _, arg = args.config.partition(":")
  config = load_config_file(path, arg or None, what="--config")
  if args.data_dir:
    config.data.data_dir = args.data_dir
  for item in args.builder:
    key, _, value = item.partition("=")
    config.data.builder[key] = ast.literal_eval(value)
  builder = datasets.open_prepared(config.data)
  meta = builder.info.metadata
  mean, std = np.asarray(meta[contract.META_MEAN]), np.asarray(meta[contract.META_STD])
  class_names = list(meta[contract.META_CLASS_NAMES])
  k, ignore = len(class_names), int(meta[contract.META_IGNORE_INDEX])
  train_split, test_split = config.data.train_split, config.finetune.test_split
  test = pipeline.read_examples(builder, test_split,
                                np.arange(builder.info.splits[test_split].num_examples), KEYS)
  n_train = builder.info.splits[train_split].num_examples
  t, s, c = int(meta[contract.META_NUM_DATES]), int(meta[contract.META_TILE_SIZE]), len(mean)

  embedders = {}

  def features_of(source, batch):
    image, valid = batch[contract.IMAGE], batch[contract.VALID]
    if source == PIXELS:
      return pixel_features(image, valid, mean, std, list(meta[contract.META_BANDS]),
                            indices=uses_indices)
    if source.endswith("+" + PIXELS):
      return beside_pixels(features_of(source[:-len(PIXELS) - 1], batch),
                           features_of(PIXELS, batch))
    if source.endswith(BESIDE):
      return with_input(features_of(source[:-len(BESIDE)], batch), image, valid, mean, std)
    if source in ("raw", "raw3x3"):
      raw = raw_features(image, valid, mean, std)
      return raw if source == "raw" else smoothed(raw)
    if source not in embedders:  # one initialisation or checkpoint read (and compile) each
      if source == "random":
        cfg = config.model
        params = models.init_params(models.build_backbone(cfg), jax.random.PRNGKey(0),
                                    (1, t, s, s, c), with_valid=True)
        embedders[source] = embedder(cfg, params, mean, std, layer=args.layer)
      else:
        embedders[source] = from_checkpoint(source, meta[contract.META_BANDS],
                                            os.fspath(builder.data_dir), layer=args.layer)
    return embedders[source](image, valid)

  def where(source):
    return f" [{args.layer}]" if args.layer and not source.startswith("raw") else ""

  sources = args.sources.split(",")
  test_features = {source: features_of(source, test) for source in sources}  # once each

  def report(fraction, tiles, predict, source, method=""):
    label = test[contract.LABEL].reshape(-1)
    pred = predict(test_features[source])
    keep = label != ignore
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (label[keep], pred[keep]), 1)
    scores = metrics.segmentation_scores(cm, class_names)
    print(f"{fraction:9.4g} {tiles:6d}  {100 * scores['miou']:6.1f} "
          f"{100 * scores['oa']:6.1f}  {source}{where(source)}{method}", flush=True)

  pool = {}
  if args.clusters:
    every = pipeline.read_examples(builder, train_split, np.arange(n_train), KEYS)
    pool = {source: features_of(source, every) for source in sources}
  print(f"{'fraction':>9} {'tiles':>6}  {'mIoU':>6} {'OA':>6}  source")
  for fraction in [float(f) for f in args.fractions.split(",")]:
    indices = label_fractions.fraction_indices(n_train, fraction, args.seed)
    train = pipeline.read_examples(builder, train_split, indices, KEYS)
    for source in sources:
      features = features_of(source, train)
      if args.classifier:
        keep = counted(train[contract.LABEL], train[contract.VALID], k, ignore)
        predict = fit_classifier(args.classifier, features, train[contract.LABEL], keep, k,
                                 args.seed)
      else:
        predict = fit_probe(features, train[contract.LABEL], k, ignore, steps=args.steps)
      report(fraction, len(indices), predict, source,
             f" ({args.classifier})" if args.classifier else "")
      if args.clusters:
        report(fraction, len(indices),
               fit_clusters(pool[source], features, train[contract.LABEL], args.clusters, k,
                            ignore), source, f" (k-means {args.clusters})")


if __name__ == "__main__":
  main()
