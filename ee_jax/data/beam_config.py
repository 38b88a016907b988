"""`config.data.beam_runner` / `beam_options` -> TFDS's DownloadConfig for a Beam build.

'' (the default) keeps the plain build in this process. A runner name builds the dataset
as an Apache Beam pipeline (tfds_builders/beam_tiles.py); `beam_options` are the runner's
pipeline flags, as one string ('--direct_num_workers=2 --project=p') or a list of flags.
Checked before anything is read, so a typo is one line, not a failed pipeline.
"""

import shlex

from ee_jax.errors import ConfigError

RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")


def flags(data_cfg) -> list[str] | None:
  """The pipeline flags, `--runner` first; None for the plain build."""
  runner = (data_cfg.get("beam_runner") or "").strip()
  options = data_cfg.get("beam_options") or ()
  if not runner:
    if options:
      raise ConfigError("config.data.beam_options is set but config.data.beam_runner is "
                        "empty: name a runner (e.g. DirectRunner) or drop the options")
    return None
  if runner not in RUNNERS:
    raise ConfigError(f"config.data.beam_runner: unknown runner '{runner}'; known: "
                      f"{', '.join(RUNNERS)} ('' builds without Beam)")
  options = shlex.split(options) if isinstance(options, str) else [str(o) for o in options]
  bad = [o for o in options if not o.startswith("--")]
  if bad:
    raise ConfigError(f"config.data.beam_options: {bad[0]!r} is not a pipeline flag "
                      f"(--name=value)")
  if any(o.startswith("--runner") for o in options):
    raise ConfigError("config.data.beam_options: give the runner in config.data.beam_runner, "
                      "not --runner")
  return [f"--runner={runner}", *options]


def pipeline_options(flag_list: list[str]):
  """Beam's PipelineOptions for the flags; one line when apache-beam is missing."""
  try:
    from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError("config.data.beam_runner needs Apache Beam: "
                      "pip install 'ee-jax[beam]' (or leave beam_runner empty)") from None
  return PipelineOptions(flag_list)
