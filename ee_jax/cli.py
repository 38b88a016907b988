"""The one entry point: `ee-jax --mode=MODE --config=X[:arg] --workdir=W` (the console
script of the wheel), also `python launch.py ...` and `python -m ee_jax.cli ...`.

`--config` is a config file's path or a shipped config's name (`study_synthetic:smoke`,
ee_jax/config_files.py). Flags only parse the command line; everything below them lives in
`ee_jax.run`, which tests call directly. Nothing heavy is imported before `main()`: the
process may first execute itself again (malloc tunables are read at start) and the CPU
device count must be set before JAX starts.
"""

import re
import sys

from absl import app
from absl import flags
from absl import logging

from ee_jax import config_files
from ee_jax.errors import ConfigError
from ee_jax.runtime import host_devices, host_memory

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The flags, once per process; after host_devices.configure(): ee_jax.run imports JAX."""
  if "mode" in FLAGS:
    return
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from ee_jax import run as run_lib  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "Experiment config: a file "
                                  "(configs/*.py[:arg]) or a shipped config's name "
                                  "(study_synthetic:smoke).", lock_config=True)
  flags.DEFINE_enum("mode", "build", sorted(run_lib.MODES), "What to run.")
  flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, reports.")
  flags.mark_flags_as_required(["config"])
  flags.DEFINE_string("scene", None, "--mode=predict/embed: a product folder or multi-band "
                      "GeoTIFF; a comma-separated list (or a .json/.csv manifest) for a "
                      "time series.")
  flags.DEFINE_string("out", None, "--mode=predict/embed: the output GeoTIFF (class map or "
                      "embedding); further outputs are named after it.")
  flags.DEFINE_string("points", None, "--mode=embed: a CSV of points (columns x,y in the "
                      "scene's CRS or lon,lat in degrees; others such as label carried over): "
                      "also writes their embeddings as a table, <out stem>_points.csv.")
  # Multi-process runs (docs/scaling.md): every process runs the same command.
  flags.DEFINE_bool("distributed", False, "Join a multi-process run "
                    "(jax.distributed.initialize) first: TPU VM pod slices, "
                    "multi-GPU/multi-node, CPU clusters.")
  flags.DEFINE_string("coordinator_address", None, "--distributed: HOST:PORT of process 0 "
                      "(else $JAX_COORDINATOR_ADDRESS, else auto-detected: TPU VM, SLURM, "
                      "MPI).")
  flags.DEFINE_integer("num_processes", None, "--distributed: number of processes "
                       "(else $JAX_NUM_PROCESSES, else auto-detected).")
  flags.DEFINE_integer("cpu_devices", 0, "On a CPU: XLA devices that share each step's "
                       "batch (data-parallel, same global batch and maths); 0 = one per "
                       "usable core that divides config.data.per_device_batch, 1 = one "
                       "device. Ignored on GPU/TPU, with --distributed, and when XLA_FLAGS "
                       "sets a device count.")
  flags.DEFINE_integer("process_id", None, "--distributed: this process, 0 .. "
                       "num_processes-1 (else $JAX_PROCESS_ID, else auto-detected).")


def _config_arg(argv) -> tuple[int, str] | None:
  """(index in argv, value) of --config."""
  for i, a in enumerate(argv[1:], 1):
    if a.startswith("--config="):
      return i, a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return i + 1, argv[i + 1]
  return None


def _one_line(error: Exception) -> str:
  """absl's message for a bad flag, or the config file's own error, as one line."""
  text = str(error)
  if "Traceback" in text:  # the config file raised: its last line is its own message
    flag = text.split(": Error whilst", 1)[0].replace("flag ", "", 1)
    last = [line for line in text.splitlines() if line.strip()][-1]
    kind, _, message = last.partition(": ")
    wrong_type = re.search(r"Could not override field '(\w+)'.*?(\S+) is of original type "
                           r"<class '(\w+)'> and cannot be casted to type <class '(\w+)'>", last)
    if wrong_type:
      key, value, got, want = wrong_type.groups()
      message = (f"'{key}' takes a {want}, not the {got} {value}; write it as a {want} "
                 f"(e.g. '{value.lower()}')")
    message = message or kind
    return message if message.startswith(flag.split("=", 1)[-1].split(":")[0]) else (
        f"{flag}: {message}")
  line = text.splitlines()[0].replace("flag --", "--", 1)
  return re.sub(r"invalid literal for (int|float)\(\)( with base 10)?: (.*)",
                r"\3 is not a number (\1)", line)


def parse_flags(argv):
  """absl parsing; every mistake on the command line is one line naming the flag or file."""
  config = _config_arg(argv)
  if config is None:
    sys.exit("error: --config is required, e.g. --config=configs/pretrain_s2.py or "
             f"--config=pretrain_s2 (shipped: {', '.join(config_files.shipped_names())})")
  index, spec = config
  try:
    resolved = config_files.resolve(spec)
  except ConfigError as e:
    sys.exit(f"error: {e}")
  argv = list(argv)
  argv[index] = ("--config=" + resolved) if argv[index].startswith("--config=") else resolved
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:
    text = str(e)
    key = re.search(r"([A-Za-z_]\w*)", text).group(1)
    culprits = [a for a in argv if re.match(rf"--config\.(.+\.)?{re.escape(key)}(\.|=|$)", a)]
    where = f" (from {culprits[0].split('=')[0]})" if culprits else ""
    hint = re.search(r'Did you mean "(\w+)"', text)
    hint = f"; did you mean '{hint.group(1)}'?" if hint else "; see the config file for the keys"
    sys.exit(f"error: unknown config key '{key}'{where}{hint}")
  except flags.Error as e:
    sys.exit(f"error: {_one_line(e)}")


def _run(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.distributed:  # before JAX's CPU client exists: one CPU device per core
    batch = int(FLAGS.config.get("data", {}).get("per_device_batch", 1))
    try:
      host_devices.split_cpu(batch, FLAGS.cpu_devices)
    except ValueError as e:
      sys.exit(f"error: --cpu_devices={FLAGS.cpu_devices}: {e}")
  from ee_jax.runtime import persistent_cache  # pylint: disable=import-outside-toplevel
  from ee_jax import run as run_lib  # pylint: disable=import-outside-toplevel
  persistent_cache.enable()   # compiled steps kept on disk: seeds and repeated commands reuse them
  if FLAGS.distributed:
    from ee_jax.runtime import distributed  # pylint: disable=import-outside-toplevel
    try:
      distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except ConfigError as e:
      sys.exit(f"error: {e}")
  run_lib.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, scene=FLAGS.scene, out=FLAGS.out,
              points=FLAGS.points)


def main(argv=None) -> None:
  """The console script `ee-jax`: argv as sys.argv (program name first)."""
  host_memory.restart_with_huge_pages()  # may execute this program again, first thing
  host_devices.configure()  # before JAX: fake CPU devices (XLA_FLAGS) that cannot deadlock
  host_memory.tune_malloc()  # freed step buffers kept for the next step (no page faults)
  _define_flags()
  app.run(_run, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
  main()
