"""The one entry point: `python launch.py --mode=MODE --config=configs/X.py[:arg] --workdir=W`.

A thin wrapper of `ee_jax.cli.main`, which the wheel installs as the console script
`ee-jax` (same flags; configs by path or by shipped name).
"""

from ee_jax import cli

if __name__ == "__main__":
  cli.main()
