"""`python -m rwl_jax.memory`: Per-device memory of the loss and the step. The command only; the tool is
rwl_jax/tools/memory.py (importable, with the flags and their help)."""

from rwl_jax import cli
from rwl_jax.tools.memory import main

if __name__ == "__main__":
  cli.run(main)
