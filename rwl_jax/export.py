"""`python -m rwl_jax.export`: A trained encoder out to safetensors / msgpack / torchvision. The command only; the tool is
rwl_jax/tools/export.py (importable, with the flags and their help)."""

from rwl_jax import cli
from rwl_jax.tools.export import define_flags, main

if __name__ == "__main__":
  _flags = define_flags()  # only as a program: importing rwl_jax.tools.export defines no flags
  cli.run(lambda: main(_flags))
