"""Semi-supervised fine-tuning (rwl_jax/evaluate/finetune.py): the labelled subsets, the step on a
toy problem, several devices, its settings, and `evaluate --finetune` on a tiny trained run."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO, run_on_devices, tiny_config
from rwl_jax.run import experiment
from rwl_jax import parallel, tables
from rwl_jax.configs import common
from rwl_jax.data import array_split
from rwl_jax.data.recipe import AugmentRecipe
from rwl_jax.errors import ConfigError
from rwl_jax.evaluate import finetune


def class_counts(labels, indices, num_classes):
  return np.bincount(np.asarray(labels)[indices], minlength=num_classes)


def test_subset_is_class_balanced_with_rounded_counts():
  # Classes of 5000, 3, 10, 25 and 1 examples, shuffled together.
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(5), [5000, 3, 10, 25, 1]))
  for fraction, expected in [(0.01, [50, 1, 1, 1, 1]),  # 0.03, 0.1, 0.25 -> at least 1
                             (0.1, [500, 1, 1, 3, 1]),  # 2.5 rounds half up to 3
                             (0.5, [2500, 2, 5, 13, 1]),  # 1.5 -> 2, 12.5 -> 13
                             (1.0, [5000, 3, 10, 25, 1])]:
    subset = finetune.labelled_subset(labels, fraction, seed=0)
    np.testing.assert_array_equal(class_counts(labels, subset, 5), expected)
    assert np.all(np.diff(subset) > 0), "sorted, no index twice"
    assert subset.min() >= 0 and subset.max() < len(labels)


def test_subset_is_seeded_nested_and_leaves_the_rest_out():
  labels = np.repeat(np.arange(10), 500)
  one, ten = (finetune.labelled_subset(labels, f, seed=3) for f in (0.01, 0.1))
  np.testing.assert_array_equal(one, finetune.labelled_subset(labels, 0.01, seed=3))
  assert not np.array_equal(one, finetune.labelled_subset(labels, 0.01, seed=4))
  assert np.isin(one, ten).all(), "1 % is part of 10 % of the same seed"
  assert len(one) == 50 and len(ten) == 500
  rest = np.setdiff1d(np.arange(len(labels)), ten)
  assert len(np.intersect1d(rest, ten)) == 0 and len(rest) + len(ten) == len(labels)
  # Not simply the first examples of each class.
  assert not np.array_equal(one, np.concatenate([np.arange(5) + 500 * c for c in range(10)]))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_subset_refuses_a_fraction_outside_0_1(fraction):
  with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
    finetune.labelled_subset(np.arange(10) % 2, fraction, seed=0)


def test_fraction_names_and_crop_flip_recipe():
  assert [tables.fraction_name(f) for f in (0.01, 0.1, 0.005, 1.0, 0.07)] == [
      "1pct", "10pct", "0p5pct", "100pct", "7pct"]
  recipe = finetune.crop_flip_recipe(AugmentRecipe(jitter_prob=0.8, grayscale_prob=0.2))
  assert (recipe.jitter_prob, recipe.grayscale_prob, recipe.flip_prob) == (0.0, 0.0, 0.5)
  assert recipe.crop_scale == AugmentRecipe().crop_scale


@pytest.mark.parametrize("field, value, message", [
    ("finetune_fractions", (0.0,), r"eval.finetune_fractions must be distinct fractions"),
    ("finetune_fractions", (0.1, 1.5), r"in \(0, 1\].*got \(0.1, 1.5\)"),
    ("finetune_fractions", (0.1, 0.1), r"must be distinct"),
    ("finetune_fractions", ("x",), r"eval.finetune_fractions must be a tuple of numbers"),
    ("finetune_epochs", 0, r"eval.finetune_epochs must be an integer >= 1"),
    ("finetune_batch_size", -4, r"eval.finetune_batch_size must be an integer >= 1"),
    ("finetune_learning_rate", 0.0, r"eval.finetune_learning_rate must be > 0"),
])
def test_bad_settings_are_one_config_error_line(field, value, message):
  config = common.get_config()
  config.eval[field] = value
  with pytest.raises(ConfigError, match=message) as error:
    experiment.validate_config(config)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("fractions", [(), (0.01, 0.1), (1.0,)])
def test_good_fractions_pass(fractions):
  config = common.get_config()
  config.eval.finetune_fractions = fractions
  experiment.validate_config(config)


# --- The step on a toy problem ----------------------------------------------------------------

class ToyEncoder(nnx.Module):
  """conv 3x3 -> BatchNorm -> relu -> global mean: [B, S, S, 3] -> [B, 8]."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)  # BN cancels a bias
    self.bn = nnx.BatchNorm(8, momentum=0.9, rngs=rngs)
    self.num_features = 8

  def __call__(self, x):
    return jnp.mean(jax.nn.relu(self.bn(self.conv(x))), axis=(1, 2))


def toy_encoder(seed: int = 0) -> finetune.Encoder:
  module = ToyEncoder(nnx.Rngs(seed))
  train_def, params, batch_stats = nnx.split(module, nnx.Param, nnx.BatchStat)
  module.eval()
  return finetune.Encoder(train_def, nnx.split(module, nnx.Param, nnx.BatchStat)[0], params,
                          batch_stats, module.num_features)


def toy_split(seed: int, per_class: int = 24, size: int = 8) -> array_split.ArraySplit:
  """3 classes, each one bright colour channel over noise: separable whatever the crop or flip."""
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(3), per_class).astype(np.int32)
  images = rng.integers(0, 90, (len(labels), size, size, 3))
  images[np.arange(len(labels)), :, :, labels] += 140
  return array_split.ArraySplit(images.astype(np.uint8), labels, ("r", "g", "b"))


TOY = dict(fraction=0.5, num_classes=3, epochs=12, batch_size=12, learning_rate=0.2, seed=0,
           recipe=AugmentRecipe(), image_size=8)


@pytest.mark.slow  # trains a (toy) network
def test_fine_tuning_learns_a_separable_toy_problem_and_changes_the_encoder():
  encoder = toy_encoder()
  before = jax.tree.map(np.array, (encoder.params, encoder.batch_stats))
  mesh = parallel.make_mesh()
  train, test = toy_split(0), toy_split(1)
  state = finetune.finetune(encoder, train, mesh=mesh, **TOY)
  result = finetune.accuracy(encoder.eval_def, state, test, recipe=TOY["recipe"], mesh=mesh,
                             batch_size=32)
  assert result["top1"] >= 0.95 and result["top5"] == 1.0, result
  assert int(state["step"]) == 12 * 3  # 36 labelled images, batches of 12
  # Unlike the linear probe, the encoder's weights and BatchNorm statistics moved...
  after = jax.tree.map(np.array, (state["params"]["encoder"], state["batch_stats"]))
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), before, after)
  assert all(v > 1e-4 for v in jax.tree.leaves(moved)), moved
  # ... while the encoder it started from is untouched (its arrays were copied, not donated).
  still = jax.tree.map(np.array, (encoder.params, encoder.batch_stats))
  jax.tree.map(np.testing.assert_array_equal, before, still)
  # The untrained head on the same encoder is near chance: the figure comes from the training.
  untrained = finetune.init_state(encoder, 3, finetune.make_optimizer(0.1, 1),
                                  jax.random.key(0))
  chance = finetune.accuracy(encoder.eval_def, untrained, test, recipe=TOY["recipe"], mesh=mesh,
                             batch_size=32)
  assert chance["top1"] < 0.7, chance
  # Deterministic for a seed.
  again = finetune.finetune(encoder, train, mesh=mesh, **TOY)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, state["params"]),
               jax.tree.map(np.array, again["params"]))


_DEVICES_SCRIPT = """
import json, sys
sys.path.insert(0, "tests")
import jax, numpy as np
from rwl_jax import parallel
from rwl_jax.evaluate import finetune
from test_finetune import TOY, toy_encoder, toy_split

params = []
for count in (1, 4):
  mesh = parallel.make_mesh(jax.devices()[:count])
  state = finetune.finetune(toy_encoder(), toy_split(0), mesh=mesh, **TOY)
  params.append(jax.tree.leaves(jax.tree.map(np.asarray, state["params"])))
  accuracy = finetune.accuracy(toy_encoder().eval_def, state, toy_split(1), recipe=TOY["recipe"],
                               mesh=mesh, batch_size=30)
gap = max(float(np.max(np.abs(a - b))) for a, b in zip(*params))
scale = max(float(np.max(np.abs(a))) for a in params[0])
print("RESULT " + json.dumps({"gap": gap, "scale": scale, "top1": accuracy["top1"]}))
"""


@pytest.mark.slow  # a fresh interpreter on 4 simulated devices
def test_sharded_batches_fine_tune_like_one_device():
  # The batch is split over 4 devices; BatchNorm's statistics stay those of the global batch, so
  # the run equals the 1-device one up to float32 round-off.
  result = run_on_devices(_DEVICES_SCRIPT, devices=4, timeout=600)
  assert result["gap"] < 1e-3 * max(result["scale"], 1.0), result
  assert result["top1"] >= 0.95, result


# --- End to end on a tiny trained run ---------------------------------------------------------

@pytest.mark.slow  # trains a tiny run, then fine-tunes it twice
def test_train_and_evaluate_finetune_write_the_keys(cifar_dir, tmp_path):
  from rwl_jax import train  # pylint: disable=g-import-not-at-top

  config = tiny_config(cifar_dir, tmp_path / "cache")
  config.num_epochs = 1
  config.eval.linear_epochs = 1
  config.eval.probe_batch_size = 0
  config.eval.finetune_fractions = (0.1,)  # 6 of each class's 64 images
  config.eval.finetune_epochs = 2
  workdir = tmp_path / "run"
  results = train.train_and_evaluate(config, str(workdir))
  assert 0 <= results["finetune_10pct_top1"] <= results["finetune_10pct_top5"] <= 1
  assert {"knn_top1_k10", "knn_top5_k200"} <= set(results)
  written = json.loads((workdir / "results.json").read_text())
  assert written["finetune_10pct_top1"] == results["finetune_10pct_top1"]

  # An existing run, from the command line: the run's fractions, the same figure (seeded).
  done = subprocess.run([sys.executable, "-m", "rwl_jax.evaluate", f"--workdir={workdir}",
                         "--nolinear", "--finetune"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  printed = json.loads(done.stdout[done.stdout.index("{"):])
  assert printed["finetune_10pct_top1"] == results["finetune_10pct_top1"]
  assert printed["finetune_10pct_top5"] == results["finetune_10pct_top5"]
  assert "fine-tune 10% labels |" in done.stdout and "linear_top1" not in printed
  step = printed["step"]
  saved = json.loads((workdir / f"eval_step_{step}.json").read_text())
  assert saved["finetune_10pct_top1"] == results["finetune_10pct_top1"]

  # A run written before fine-tuning existed (no eval.finetune_* in its config.json): --finetune
  # gives SimCLR's 1 % and 10 %; without it nothing is fine-tuned.
  from rwl_jax.evaluate.run import evaluate_checkpoint  # pylint: disable=g-import-not-at-top

  saved_config = json.loads((workdir / "config.json").read_text())
  for name in ("finetune_fractions", "finetune_batch_size", "finetune_learning_rate"):
    del saved_config["eval"][name]
  (workdir / "config.json").write_text(json.dumps(saved_config))
  old_run = evaluate_checkpoint(str(workdir), linear=False, finetune=True)
  assert {"finetune_1pct_top1", "finetune_1pct_top5", "finetune_10pct_top1",
          "finetune_10pct_top5"} <= set(old_run)
  assert not any(key.startswith("finetune") for key in evaluate_checkpoint(
      str(workdir), linear=False))
