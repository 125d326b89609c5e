"""`python -m rwl_jax.report`: Tables and plots of finished runs. The command only; the tool is
rwl_jax/tools/report.py (importable, with the flags and their help)."""

from rwl_jax import cli
from rwl_jax.tools.report import main

if __name__ == "__main__":
  cli.run(main)
