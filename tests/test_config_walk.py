"""The walk of `config` from train.train_and_evaluate stays short (tests/config_walk.py measures
it on a real tiny run): few places read it, it seldom climbs back up, and nothing reads it once
training has started."""

import pytest

from config_walk import ConfigReads, Place, tiny_run_walk

@pytest.fixture(scope="module")
def walk(cifar_dir, tmp_path_factory):
  return tiny_run_walk(cifar_dir, tmp_path_factory.mktemp("walk"),
                       tmp_path_factory.mktemp("cache"))


@pytest.mark.slow  # a real (tiny) training run
def test_few_places_and_climbs(walk):
  assert len(walk.places) <= 30 and len(walk.steps) <= 30, walk.report()
  assert len(walk.climbs) <= 8, walk.report()


@pytest.mark.slow
def test_the_experiment_reads_the_whole_config_and_owners_their_sections(walk):
  readers_of_top_level = {str(place) for place in walk.places}
  # the loop, its hooks, the step and the evaluators' runs read what the experiment carries
  for module in ("loop.py", "hooks.py", "step.py", "checkpoint.py", "metrics.py"):
    assert not any(place.file.endswith(module) for place in walk.places), walk.report()
  assert "run/experiment.py:build" in readers_of_top_level
  assert not any(place.function.startswith(("FeatureExtractor", "FinetuneEvaluator",
                                            "KnnEvaluator", "LinearProbeEvaluator"))
                 for place in walk.places), walk.report()
  recipe = Place("data/recipe.py", "AugmentRecipe.from_config")
  assert walk.steps.count(recipe) <= 2, walk.report()  # validated once, built once


def test_the_measure_sees_reads_and_passes_in_order():
  from rwl_jax.run import experiment  # pylint: disable=g-import-not-at-top
  from rwl_jax.configs import common  # pylint: disable=g-import-not-at-top

  config = common.get_config()
  with ConfigReads(config) as reads:
    experiment.validate_config(config)
  walk = reads.walk()
  assert [str(p) for p in walk.steps[:3]] == [
      "run/experiment.py:validate_config", "methods/__init__.py:validate",
      "methods/__init__.py:_check_temperature"]
  assert "optimizer.py:validate" in map(str, walk.steps) and walk.climbs == []
  count = len(reads.reads)
  config.optimizer.name  # pylint: disable=pointless-statement  (outside: not recorded)
  assert len(reads.reads) == count


def test_a_caller_reading_again_is_one_climb_per_pair():
  low, high = Place("a.py", "low"), Place("b.py", "high")
  reads = ConfigReads(common_config())
  # high reads, calls low (twice, as a loop would), reading again after each return
  reads.reads = [[(high, 1)], [(low, 2), (high, 1)], [(high, 1)], [(low, 3), (high, 1)],
                 [(high, 1)]]
  walk = reads.walk()
  assert walk.steps == [high, low, high, low, high]
  assert walk.climbs == [(low, high)] and walk.places == [high, low]


def common_config():
  from rwl_jax.configs import common  # pylint: disable=g-import-not-at-top

  return common.get_config()
