"""`python -m rwl_jax.profile_summary`: Busy and idle time, kernels by kind, of a jax.profiler trace. The command only; the tool is
rwl_jax/tools/profile_summary.py (importable, with the flags and their help)."""

from rwl_jax.tools.profile_summary import main

if __name__ == "__main__":
  main()
