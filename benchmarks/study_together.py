"""Wall time of one study group, its runs trained one by one against trained together.

The group is what `study.train_together` stacks: the runs of one label fraction and recipe
(here the random arm of configs/study_synthetic.py, `--seeds` seeds, so no pre-training is
needed; its LP-FT recipe trains the head alone for the first third of `--steps`). Each arm
is one `launch.py --mode=study` command in a fresh workdir with the persistent compilation
cache off (each arm pays its own compiles, as a first study does), alternated `--repeats`
times; it prints each arm's best wall time, the ratio, and each run's test mIoU under every
arm (they must agree within float32 rounding).

  python benchmarks/study_together.py        # run by run vs together at widths 0 and 1
  python benchmarks/study_together.py --widths 0 --steps 200 --seeds 0,1,2,3,4,5
  python benchmarks/study_together.py --data_dir DIR   # the dataset there (built if absent)

Run it alone on the machine: two CPU-bound commands side by side measure each other.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _study(workdir: str, args, together: str, width: int) -> float:
  """One study command; its wall time in seconds."""
  cmd = [sys.executable, os.path.join(REPO, "launch.py"), "--mode=study",
         "--config=" + os.path.join(REPO, "configs", "study_synthetic.py"),
         f"--workdir={workdir}", f"--config.data.data_dir={args.data_dir}",
         f"--config.study.fractions=({args.fraction},)", "--config.study.inits=('random',)",
         f"--config.study.seeds=({args.seeds},)", f"--config.train.steps={args.steps}",
         f"--config.study.recipes.lp_ft.finetune.linear_probe_steps={args.steps // 3}",
         f"--config.study.train_together={together}", f"--config.study.vmap_width={width}"]
  env = dict(os.environ, EE_JAX_COMPILATION_CACHE="off")
  t0 = time.time()
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, check=False)
  wall = time.time() - t0
  if done.returncode:
    sys.exit(f"benchmarks/study_together.py: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
  return wall


def _mious(workdir: str) -> dict:
  runs = json.load(open(os.path.join(workdir, "study.json")))["runs"]
  return {r["name"]: 100 * r["miou"] for r in runs}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data_dir", default=os.path.join(REPO, ".data", "tfds"))
  p.add_argument("--fraction", type=float, default=0.25)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--widths", default="0,1", help="study.vmap_width values to time")
  p.add_argument("--repeats", type=int, default=1)
  args = p.parse_args()
  arms = [("never", 0)] + [("always", int(w)) for w in args.widths.split(",")]
  root = tempfile.mkdtemp(prefix="study_together_")
  walls, mious = {arm: [] for arm in arms}, {}
  try:
    for r in range(args.repeats):
      for together, width in arms:
        workdir = os.path.join(root, f"{together}_{width}_{r}")
        walls[(together, width)].append(_study(workdir, args, together, width))
        mious[(together, width)] = _mious(workdir)
        shutil.rmtree(workdir)
        print(f"  {together:6s} width {width}: {walls[(together, width)][-1]:.0f} s",
              flush=True)
  finally:
    shutil.rmtree(root, ignore_errors=True)
  base = min(walls[arms[0]])
  print(f"\nfraction {args.fraction:g}, random init, seeds {args.seeds}, {args.steps} steps "
        f"(LP-FT head {args.steps // 3}), {os.cpu_count()} CPUs, best of {args.repeats}")
  print("| train_together | vmap_width | wall s | vs run by run | test mIoU per run |")
  print("|---|---|---|---|---|")
  for arm in arms:
    wall = min(walls[arm])
    runs = " / ".join(f"{v:.2f}" for _, v in sorted(mious[arm].items()))
    print(f"| {arm[0]} | {arm[1] if arm[0] == 'always' else '-'} | {wall:.0f} | "
          f"{base / wall:.2f}x | {runs} |")
  worst = max(abs(mious[a][k] - mious[arms[0]][k]) for a in arms for k in mious[a])
  print(f"largest per-run mIoU difference to run by run: {worst:.2f} points")


if __name__ == "__main__":
  main()
