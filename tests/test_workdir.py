"""The workdir defends itself: one run at a time (a lock with safe takeover), and a rerun that
changes what is trained stops with the differences, before anything in the workdir changes."""

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest
from etils import epath

from conftest import REPO, tiny_config
from rwl_jax.run import workdir
from rwl_jax.errors import ConfigError


def write_lock(directory, **fields):
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": "theirs",
            "started": time.time(), "heartbeat": time.time(), **fields}
  (directory / workdir.LOCK_NAME).write_text(json.dumps(holder))


def test_a_live_holder_keeps_the_workdir(tmp_path):
  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    write_lock(tmp_path, pid=sleeper.pid)
    with pytest.raises(ConfigError, match=rf"is in use by pid {sleeper.pid} on host "
                                          rf"{socket.gethostname()} \(since .*heartbeat 0 s ago\)"):
      workdir.WorkdirLock(epath.Path(tmp_path)).acquire()
    assert json.loads((tmp_path / "lock").read_text())["token"] == "theirs"  # untouched
  finally:
    sleeper.kill()
    sleeper.wait()


def test_two_locks_exclude_each_other_and_release_removes_only_its_own(tmp_path):
  first = workdir.WorkdirLock(epath.Path(tmp_path))
  with first:
    holder = json.loads((tmp_path / "lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    # Same host, live pid (this one): a second run is refused.
    with pytest.raises(ConfigError, match="is in use by pid"):
      workdir.WorkdirLock(epath.Path(tmp_path)).acquire()
  assert not (tmp_path / "lock").exists()


def test_a_crashed_holder_on_this_host_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  write_lock(tmp_path, pid=dead.pid)
  lock = workdir.WorkdirLock(epath.Path(tmp_path))
  with caplog.at_level(logging.WARNING):
    lock.acquire()
  try:
    assert any(f"pid {dead.pid} on this host is no longer running" in r.getMessage()
               for r in caplog.records)
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lock"]  # the stale one is gone
  finally:
    lock.release()


def test_a_holder_on_another_host_is_stale_only_after_missed_heartbeats(tmp_path):
  write_lock(tmp_path, host="node-17", pid=1, heartbeat=time.time() - 10)
  with pytest.raises(ConfigError, match=r"in use by pid 1 on host node-17 .*heartbeat 10 s ago"):
    workdir.WorkdirLock(epath.Path(tmp_path)).acquire()
  write_lock(tmp_path, host="node-17", pid=1, heartbeat=time.time() - workdir.STALE_SECONDS - 5)
  lock = workdir.WorkdirLock(epath.Path(tmp_path))
  lock.acquire()
  lock.release()
  assert not (tmp_path / "lock").exists()


def test_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir, "HEARTBEAT_SECONDS", 0.05)
  with workdir.WorkdirLock(epath.Path(tmp_path)):
    first = json.loads((tmp_path / "lock").read_text())["heartbeat"]
    time.sleep(0.5)
    assert json.loads((tmp_path / "lock").read_text())["heartbeat"] > first


def saved_run(tmp_path, config):
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  return epath.Path(tmp_path)


def test_rerun_changes_that_change_training_are_refused_with_every_field(tmp_path):
  config = tiny_config("data", "cache")
  path = saved_run(tmp_path, config)
  config.method = "simclr"
  config.optimizer.learning_rate = 0.3
  with pytest.raises(ConfigError, match=r"differ from this command's: method 'rwl' -> 'simclr', "
                                        r"optimizer.learning_rate 0.1 -> 0.3; rerun with"):
    workdir.check_rerun(path, config, has_checkpoint=True, accept_change=False)
  changes = workdir.check_rerun(path, config, has_checkpoint=True, accept_change=True)
  assert changes == {"method": ("rwl", "simclr"), "optimizer.learning_rate": (0.1, 0.3)}
  # Nothing trained yet (no checkpoint): nothing to protect.
  assert workdir.check_rerun(path, config, has_checkpoint=False, accept_change=False) == changes


@pytest.mark.parametrize("field, value", [
    ("log_every_steps", 7), ("keep_checkpoints", 9), ("eval.knn_k", 20),
    ("data.image_dir", "/elsewhere/cifar10"), ("profile.start_step", 3),
    ("data.eval_image_dir", "/labelled/folder"), ("data.eval_train_split", "train"),
    ("eval.finetune_fractions", (0.01, 0.1)),
])
def test_rerun_may_change_how_the_run_is_watched_or_fed(tmp_path, field, value):
  config = tiny_config("data", "cache")
  path = saved_run(tmp_path, config)
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  changes = workdir.check_rerun(path, config, has_checkpoint=True, accept_change=False)
  assert list(changes) == [field]


def test_the_held_out_fraction_changes_the_training_images_so_it_is_not_runtime(tmp_path):
  config = tiny_config("data", "cache")
  path = saved_run(tmp_path, config)
  config.data.holdout_fraction = 0.2
  with pytest.raises(ConfigError, match="data.holdout_fraction 0.1 -> 0.2"):
    workdir.check_rerun(path, config, has_checkpoint=True, accept_change=False)


def test_the_online_probe_changes_training_so_it_is_not_a_runtime_setting(tmp_path):
  config = tiny_config("data", "cache")
  path = saved_run(tmp_path, config)
  config.eval.online_probe = True
  with pytest.raises(ConfigError, match="eval.online_probe False -> True"):
    workdir.check_rerun(path, config, has_checkpoint=True, accept_change=False)


def test_a_workdir_from_before_a_setting_existed_compares_with_its_default(tmp_path):
  config = tiny_config("data", "cache")
  saved = json.loads(config.to_json_best_effort())
  del saved["eval"]["online_probe"], saved["profile"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert workdir.check_rerun(epath.Path(tmp_path), config, has_checkpoint=True,
                             accept_change=False) == {}


def test_record_config_writes_the_config_and_appends_the_history(tmp_path):
  config = tiny_config("data", "cache")
  path = epath.Path(tmp_path)
  workdir.record_config(path, config, {}, 0)
  assert not (tmp_path / workdir.HISTORY_NAME).exists()
  config.num_epochs = 9
  workdir.record_config(path, config, {"num_epochs": (2, 9)}, 40)
  workdir.record_config(path, config, {"log_every_steps": (5, 1)}, 60)
  assert json.loads((tmp_path / "config.json").read_text())["num_epochs"] == 9
  rows = [json.loads(line) for line in (tmp_path / workdir.HISTORY_NAME).read_text().splitlines()]
  assert [(row["step"], row["changes"]) for row in rows] == [
      (40, {"num_epochs": {"old": 2, "new": 9}}), (60, {"log_every_steps": {"old": 5, "new": 1}})]


def test_workdir_that_is_a_file_or_under_one(tmp_path):
  (tmp_path / "afile").write_text("")
  with pytest.raises(ConfigError, match=r"--workdir .*afile is a file, not a folder"):
    workdir.prepare(epath.Path(tmp_path / "afile"))
  with pytest.raises(ConfigError, match=r"--workdir .*afile/run cannot be made: Not a directory"):
    workdir.prepare(epath.Path(tmp_path / "afile" / "run"))


@pytest.mark.slow
def test_two_runs_started_together_one_trains_the_other_stops(cifar_dir, tmp_path):
  command = [sys.executable, "-m", "rwl_jax.main", "--config=configs/cifar10_rwl.py",
             f"--workdir={tmp_path / 'work'}", f"--config.data.image_dir={cifar_dir}",
             f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.num_epochs=1",
             "--config.global_batch_size=32", "--config.model.width=4",
             "--config.model.encoder=resnet10", "--config.model.projector_dims=(16,8)",
             "--config.data.max_train_examples=96", "--config.log_every_steps=1",
             "--config.eval.linear_epochs=1", "--config.eval.probe_batch_size=0"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  runs = []
  for _ in range(2):
    runs.append(subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    time.sleep(1.0)
  outputs = [run.communicate(timeout=600)[1] for run in runs]
  codes = sorted(run.returncode for run in runs)
  assert codes == [0, 2], [output[-2000:] for output in outputs]
  winner, loser = (0, 1) if runs[0].returncode == 0 else (1, 0)
  assert "Traceback" not in outputs[loser]
  assert outputs[loser].strip().splitlines()[-1].startswith(
      f"error: --workdir {tmp_path / 'work'} is in use by pid {runs[winner].pid} on host")
  rows = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
  steps = [row["step"] for row in rows if "loss" in row]
  assert steps == [1, 2, 3]  # one run's rows, no duplicates
  assert not (tmp_path / "work" / "lock").exists()


def test_a_lock_of_garbage_left_long_ago_is_taken_over(tmp_path, caplog):
  (tmp_path / "lock").write_bytes(b"\x00\x00garbage")
  old = time.time() - 60
  os.utime(tmp_path / "lock", (old, old))
  lock = workdir.WorkdirLock(epath.Path(tmp_path))
  with caplog.at_level(logging.WARNING):
    lock.acquire()
  try:
    assert [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()] == [
        f"taking over the lock of {tmp_path}: it does not parse as a lock (unchanged for 60 s)"]
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()
  finally:
    lock.release()


@pytest.mark.parametrize("holder", [{"host": socket.gethostname()},  # no pid: not "pid -1"
                                    {"pid": "x", "host": "h", "started": 0, "heartbeat": 0}, [1]])
def test_a_lock_naming_no_holder_is_taken_over(tmp_path, holder):
  (tmp_path / "lock").write_text(json.dumps(holder))
  old = time.time() - 60
  os.utime(tmp_path / "lock", (old, old))
  lock = workdir.WorkdirLock(epath.Path(tmp_path))
  lock.acquire()
  lock.release()
  assert not (tmp_path / "lock").exists()


def test_a_lock_being_written_now_is_not_taken_over(tmp_path, monkeypatch):
  """A starting run creates its lock, then writes it: empty for an instant. That is not garbage."""
  (tmp_path / "lock").write_bytes(b"")
  monkeypatch.setattr(workdir.time, "sleep", lambda seconds: None)
  with pytest.raises(ConfigError, match=r"lock: could not be taken \(another run is starting"):
    workdir.WorkdirLock(epath.Path(tmp_path)).acquire()
  assert (tmp_path / "lock").read_bytes() == b""


def damaged_config(tmp_path):
  config = tiny_config("data", "cache")
  text = config.to_json_best_effort(indent=2)
  (tmp_path / "config.json").write_text(text[:len(text) // 3])
  return config, epath.Path(tmp_path), text[:len(text) // 3]


def test_a_damaged_config_is_set_aside_when_nothing_was_trained(tmp_path, caplog):
  config, path, damaged = damaged_config(tmp_path)
  with caplog.at_level(logging.WARNING):
    assert workdir.check_rerun(path, config, has_checkpoint=False, accept_change=False) == {}
  assert "nothing was trained yet" in caplog.text
  assert (tmp_path / "config.json").read_text() == damaged  # checking writes nothing
  workdir.record_config(path, config, {}, 0)
  assert (tmp_path / "config.json.unreadable").read_text() == damaged
  assert json.loads((tmp_path / "config.json").read_text())["method"] == "rwl"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "config.json.unreadable"]


def test_a_damaged_config_with_checkpoints_needs_accept_config_change(tmp_path):
  config, path, damaged = damaged_config(tmp_path)
  with pytest.raises(ConfigError, match=r"config.json: is cut short \(.*\); so this rerun cannot "
                                        r"be checked .*or pass --accept_config_change"):
    workdir.check_rerun(path, config, has_checkpoint=True, accept_change=False)
  changes = workdir.check_rerun(path, config, has_checkpoint=True, accept_change=True)
  assert list(changes) == ["config.json"]
  workdir.record_config(path, config, changes, 40)
  workdir.record_config(path, config, changes, 40)  # a second set-aside takes a new name
  assert (tmp_path / "config.json.unreadable").read_text() == damaged
  assert not (tmp_path / "config.json.unreadable.2").exists()  # the second config.json was whole
  row = json.loads((tmp_path / workdir.HISTORY_NAME).read_text().splitlines()[0])
  assert row["changes"]["config.json"]["new"] == "this command's settings"


def test_history_with_a_torn_last_line_is_kept_and_appended_to(tmp_path, caplog):
  config = tiny_config("data", "cache")
  (tmp_path / workdir.HISTORY_NAME).write_bytes(b'{"time": "x", "step": 4, "cha\xff')
  with caplog.at_level(logging.WARNING):
    workdir.record_config(epath.Path(tmp_path), config, {"num_epochs": (2, 3)}, 8)
  assert "its last line is cut short" in caplog.text
  lines = (tmp_path / workdir.HISTORY_NAME).read_bytes().split(b"\n")
  assert lines[0] == b'{"time": "x", "step": 4, "cha\xff' and json.loads(lines[1])["step"] == 8


@pytest.mark.parametrize("text, said", [
    ("", r"config.json: is empty \(a write cut short\?\)"),
    ('{"method": "rwl", "model": {"wid', r"config.json: is cut short \(Unterminated string"),
    ('{"method": "rwl",, }', r"config.json: is not JSON \(Expecting property name"),
    ("[1, 2]", r"config.json: holds a JSON list, not a config"),
    ('{"model": "resnet18"}', r"config.json: not a config this rwl_jax can use \(model must be a "
                              r"section of fields, got 'resnet18'\); it was written by another"),
    ('{"method": "moco"}', r"config.json: not a config this rwl_jax can use \(unknown method"),
])
def test_read_config_names_the_file_and_what_is_wrong(tmp_path, text, said):
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(ConfigError, match=said) as error:
    workdir.read_config(epath.Path(tmp_path))
  assert "\n" not in str(error.value)
  assert (tmp_path / "config.json").read_text() == text


def test_read_config_of_a_newer_rwl_jax_warns_of_unknown_settings(tmp_path, caplog):
  saved = json.loads(tiny_config("data", "cache").to_json_best_effort())
  saved["model"]["future_knob"] = 3
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with caplog.at_level(logging.WARNING):
    config = workdir.read_config(epath.Path(tmp_path))
  assert config.model.width == 8 and "does not know, ignored: model.future_knob" in caplog.text
