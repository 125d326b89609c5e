"""The run: the experiment built once from a config, the pure step, the loop and its hooks, and
what a run keeps in its workdir (lock and recorded config, checkpoints, metrics).

  experiment.py  the builder: model definitions, optimiser, method, shardings, step, features
  step.py        the pure train step (state, batch) -> (state, metrics) and TrainState
  loop.py        steps, then the hooks due after each; stop signals agreed across processes
  hooks.py       periodic actions, each with its own Schedule: log, diagnostics, progress (ETA),
                 checkpoint, evaluation, profile
  workdir.py     the workdir's lock, the recorded config and the rerun check
  checkpoint.py  Orbax checkpoints: save, resume, damaged-checkpoint fallback
  metrics.py     TensorBoard events, metrics.jsonl and results.json
"""
