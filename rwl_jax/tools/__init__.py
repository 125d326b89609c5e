"""The command-line tools around training, importable: benchmark (step and pipeline throughput,
variants, profiles), memory (per-device memory of the loss and the step), export (encoders out to
safetensors / msgpack / torchvision, and load_encoder back), report (tables and plots of runs),
profile_summary (a jax.profiler trace in numbers). Each runs as `python -m rwl_jax.NAME` or
`rwl-jax NAME`.
"""
