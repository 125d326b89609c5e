"""The evaluations compiled ahead of time: the same figures as the functions, one compilation per
shape however often they run, and features of another shape refused rather than recompiled."""

import numpy as np
import pytest

from rwl_jax import compilation
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate.evaluators import KnnEvaluator, LinearProbeEvaluator, SplitFeatures
from rwl_jax.evaluate.knn import KnnSweep, knn_sweep
from rwl_jax.evaluate.linear_probe import LinearProbe, linear_probe_accuracy

# Shapes no other test uses, so no other test compiled these programs in this process.
NUM_TRAIN, NUM_TEST, DIM, CLASSES = 83, 29, 11, 4


def features(seed):
  rng = np.random.default_rng(seed)
  return SplitFeatures(
      train=(rng.normal(size=(NUM_TRAIN, DIM)).astype(np.float32),
             rng.integers(0, CLASSES, NUM_TRAIN).astype(np.int32)),
      test=(rng.normal(size=(NUM_TEST, DIM)).astype(np.float32),
            rng.integers(0, CLASSES, NUM_TEST).astype(np.int32)))


def test_compiled_knn_sweep_and_linear_probe_give_the_functions_figures():
  data = features(0)
  sweep = KnnSweep(num_train=NUM_TRAIN, num_test=NUM_TEST, dim=DIM, num_classes=CLASSES,
                   ks=(5, 200, 5))
  assert sweep(*data.train, *data.test, temperature=0.07) == knn_sweep(
      *data.train, *data.test, num_classes=CLASSES, ks=(5, 200), temperature=0.07)
  probe = LinearProbe(num_train=NUM_TRAIN, num_test=NUM_TEST, dim=DIM, num_classes=CLASSES,
                      epochs=3, batch_size=16, learning_rate=0.2, weight_decay=1e-3, seed=5)
  assert probe(*data.train, *data.test) == linear_probe_accuracy(
      *data.train, *data.test, num_classes=CLASSES, epochs=3, batch_size=16, learning_rate=0.2,
      weight_decay=1e-3, seed=5)
  with pytest.raises(ConfigError, match=r"KnnSweep: compiled for features of shapes"):
    sweep(data.train[0][:-1], data.train[1][:-1], *data.test)
  with pytest.raises(ConfigError, match=r"LinearProbe: compiled for features of shapes"):
    probe(*data.train, data.test[0][:-2], data.test[1][:-2])


def test_evaluators_compile_once_however_often_they_run():
  knn = KnnEvaluator(num_classes=CLASSES, k=7, temperature=0.1, k_sweep=(3,))
  linear = LinearProbeEvaluator(num_classes=CLASSES, epochs=2, batch_size=32, learning_rate=0.1,
                                weight_decay=0.0, seed=0)
  abstract = features(0)
  with compilation.CompileLog() as log:
    knn.compile(abstract)
    linear.compile(abstract)
    ahead = len(log.compilations)
    results = [(knn(features(seed)), linear(features(seed))) for seed in range(3)]
  assert ahead == 2 and len(log.compilations) == 2, [c.name for c in log.compilations]
  assert len({str(r) for r in results}) == 3  # three evaluations of three feature sets
  assert set(results[0][0]) == {"knn_top1", "knn_top5", "knn_top1_k3", "knn_top5_k3"}
