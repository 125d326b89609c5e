"""`python -m rwl_jax.benchmark`: Throughput of the train step and the input pipeline. The command only; the tool is
rwl_jax/tools/benchmark.py (importable, with the flags and their help)."""

from rwl_jax import cli
from rwl_jax.tools.benchmark import main

if __name__ == "__main__":
  cli.run(main, distributed=True)
