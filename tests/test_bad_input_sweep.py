"""The bad-input sweep: every command-line tool of the package, fed a table of mistakes through
its real entry point in a subprocess, must end with exactly one `error:` line naming the problem,
exit status 2 and no traceback. README's bad-input table lists the same classes.

The fast tier runs one case of each class; the slow tier runs them all (each case is a fresh
interpreter, ~2 s).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import REPO

slow = pytest.mark.slow


def _unwritable(folder):
  if not os.path.isdir(folder):
    return False
  try:
    os.close(os.open(os.path.join(folder, ".rwl_probe"), os.O_CREAT | os.O_WRONLY))
  except OSError:
    return True
  os.unlink(os.path.join(folder, ".rwl_probe"))
  return False


def live_lock(tmp):
  (tmp / "run").mkdir()
  (tmp / "run" / "lock").write_text(json.dumps({
      "host": socket.gethostname(), "pid": os.getpid(), "token": "theirs",
      "started": time.time(), "heartbeat": time.time()}))


def a_file(tmp):
  (tmp / "afile").write_text("")


def broken_config(tmp):
  (tmp / "broken.py").write_text("def get_config(:\n")
  (tmp / "raising.py").write_text("def get_config():\n  raise RuntimeError('no GPU budget')\n")


def nested_images(tmp):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for split in ("train", "test"):
    (tmp / "images" / split / "cat" / "inner").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp / "images" / split / "cat" / "inner"
                                                          / "0.png")


def not_a_run(tmp):
  (tmp / "notrun").mkdir()


TRAIN = ("rwl_jax.main", ["--config=cifar10_rwl", "--workdir={tmp}/run"])
# (case, (module, base args), extra args, what the error line says (regex), setup, fast tier)
CASES = [
    # Config overrides: no such field, a typo, a wrong type, out of range, unparsable.
    ("override names no field", TRAIN, ["--config.batch_size=16"],
     r"names a field the config does not have: batch_size", None, True),
    ("override with a typo", TRAIN, ["--config.modle.width=8"],
     r"does not have: modle \(Did you mean \"model\"", None, False),
    ("tuple given a number", TRAIN, ["--config.augment.crop_scale=0.5"],
     r"augment.crop_scale must be a pair \(low, high\)", None, True),
    ("negative seed", TRAIN, ["--config.seed=-1"], r"seed must be an integer in \[0, 2\*\*31\)",
     None, False),
    ("unparsable number", TRAIN, ["--config.num_epochs=abc"],
     r"flag --config.num_epochs=abc: invalid literal for int\(\)", None, False),
    ("tuple of words", TRAIN, ["--config.model.projector_dims=(a,b)"],
     r"model.projector_dims must be a tuple of numbers", None, False),
    ("zero temperature", TRAIN, ["--config.temperature=0"], r"temperature must be > 0", None, False),
    ("unknown method", TRAIN, ["--config.method=moco"], r"unknown method 'moco'", None, False),
    ("eval setting", TRAIN, ["--config.eval.knn_k=0"], r"eval.knn_k must be an integer >= 1",
     None, True),
    ("online probe rate", TRAIN, ["--config.eval.online_probe_learning_rate=-1"],
     r"eval.online_probe_learning_rate must be > 0", None, False),
    ("unknown optimizer", TRAIN, ["--config.optimizer.name=adam"], r"unknown optimizer.name 'adam'",
     None, False),
    ("bad dtype", TRAIN, ["--config.model.dtype=float16"], r"unknown model.dtype 'float16'", None,
     False),
    # Config files.
    ("missing config file", ("rwl_jax.main", ["--workdir={tmp}/run"]), ["--config=nope.py"],
     r"--config=nope.py cannot be loaded: \[Errno 2\]", None, True),
    ("config with a syntax error", ("rwl_jax.main", ["--workdir={tmp}/run"]),
     ["--config={tmp}/broken.py"], r"broken.py cannot be loaded: .*invalid syntax", broken_config,
     False),
    ("config that raises", ("rwl_jax.main", ["--workdir={tmp}/run"]),
     ["--config={tmp}/raising.py"], r"raising.py cannot be loaded: .*no GPU budget", broken_config,
     False),
    ("unknown variant", ("rwl_jax.main", ["--workdir={tmp}/run"]), ["--config=cifar10_rwl:tiny"],
     r"unknown config variant 'tiny'", None, False),
    # Flags.
    ("unknown flag", TRAIN, ["--bogus=1"], r"Unknown command line flag 'bogus'", None, True),
    ("stray argument", TRAIN, ["extra"], r"unexpected arguments: extra", None, False),
    ("missing workdir", ("rwl_jax.main", ["--config=cifar10_rwl"]), [],
     r"--workdir must have a value other than None", None, False),
    # Workdirs.
    ("workdir is a file", ("rwl_jax.main", ["--config=cifar10_rwl"]), ["--workdir={tmp}/afile"],
     r"--workdir .*afile is a file, not a folder", a_file, True),
    ("workdir under a file", ("rwl_jax.main", ["--config=cifar10_rwl"]),
     ["--workdir={tmp}/afile/run"], r"afile/run cannot be made: Not a directory", a_file, False),
    ("workdir not writable", ("rwl_jax.main", ["--config=cifar10_rwl"]), ["--workdir=/sys/kernel"],
     r"--workdir /sys/kernel is not writable", None, False),
    ("workdir URL scheme", ("rwl_jax.main", ["--config=cifar10_rwl"]), ["--workdir=ram://x/run"],
     r"unsupported URL scheme 'ram://'", None, False),
    ("workdir in use", TRAIN, [], rf"--workdir .*run is in use by pid {os.getpid()} on host",
     live_lock, True),
    # Data.
    ("missing image folder", TRAIN, ["--config.data.image_dir={tmp}/none"],
     r"data.image_dir .*none' does not exist", None, True),
    ("images in a subfolder", TRAIN, ["--config.data.image_dir={tmp}/images"],
     r"class folder .*cat has no images .*\(it has inner/: images must sit directly in it\)",
     nested_images, False),
    # evaluate.
    ("evaluate: not a run", ("rwl_jax.evaluate", []), ["--workdir={tmp}/notrun"],
     r"config.json not found: --workdir must be a directory a training run wrote", not_a_run, True),
    ("evaluate: bad step", ("rwl_jax.evaluate", ["--workdir={tmp}/notrun"]), ["--step=last"],
     r"flag --step=last", not_a_run, False),
    # benchmark and memory.
    ("benchmark: negative steps", ("rwl_jax.benchmark", ["--config=cifar10_rwl:smoke"]),
     ["--steps=-3", "--output={tmp}/b.json"], r"--steps must be", None, True),
    ("benchmark: negative warmup", ("rwl_jax.benchmark", ["--config=cifar10_rwl:smoke"]),
     ["--warmup=-1", "--output={tmp}/b.json"], r"--warmup >= 0, got 20 and -1", None, False),
    ("benchmark: output is a folder", ("rwl_jax.benchmark", ["--config=cifar10_rwl:smoke"]),
     ["--output={tmp}"], r"--output=.* is a folder", None, False),
    ("memory: zero batch", ("rwl_jax.memory", ["--config=cifar10_rwl"]), ["--batches=0"],
     r"--batches", None, True),
    ("memory: word batch", ("rwl_jax.memory", ["--config=cifar10_rwl"]), ["--batches=big"],
     r"--batches", None, False),
    # report.
    ("report: not a run", ("rwl_jax.report", []), ["--workdirs={tmp}/notrun"], r"notrun", not_a_run,
     True),
    ("report: plot is a folder", ("rwl_jax.report", ["--workdirs={tmp}/notrun"]), ["--plot={tmp}"],
     r"--plot=.* is a folder", not_a_run, False),
]


@pytest.mark.parametrize(
    "case, tool, extra, said, setup",
    [pytest.param(*case[:5], id=case[0], marks=() if case[5] else slow) for case in CASES])
def test_bad_input_is_one_error_line(case, tool, extra, said, setup, tmp_path):
  if case == "workdir not writable" and not _unwritable("/sys/kernel"):
    pytest.skip("/sys/kernel is writable or absent here")
  if setup:
    setup(tmp_path)
  module, base = tool
  argv = [arg.replace("{tmp}", str(tmp_path)) for arg in base + extra]
  said = said.replace("{tmp}", re.escape(str(tmp_path)))
  done = subprocess.run([sys.executable, "-m", module, *argv], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
  assert len(errors) == 1 and re.search(said, errors[0]), done.stderr[-3000:]


def wait_for(process, text, output, timeout=300):
  """Reads process's stderr lines into output until one contains text."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    line = process.stderr.readline()
    if not line:
      return False
    output.append(line)
    if text in line:
      return True
  return False


@slow
@pytest.mark.parametrize("moment, signals", [
    ("while the data is read and the step compiles", [signal.SIGINT]),
    ("twice in quick succession during training", [signal.SIGINT, signal.SIGINT]),
    ("SIGTERM then Ctrl-C during training", [signal.SIGTERM, signal.SIGINT]),
])
def test_signals_at_awkward_moments_end_in_one_line(moment, signals, cifar_dir, tmp_path):
  command = [sys.executable, "-m", "rwl_jax.main", "--config=cifar10_rwl",
             f"--workdir={tmp_path / 'run'}", f"--config.data.image_dir={cifar_dir}",
             f"--config.data.cache_dir={tmp_path / 'cache'}", "--config.num_epochs=50",
             "--config.global_batch_size=32", "--config.model.width=4",
             "--config.model.encoder=resnet10", "--config.model.projector_dims=(16,8)",
             "--config.log_every_steps=1", "--config.eval.probe_batch_size=0"]
  process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, JAX_PLATFORMS="cpu"))
  output = []
  marker = "reads train examples" if moment.startswith("while") else "loss"
  try:
    assert wait_for(process, marker, output), "".join(output)
    for sig in signals:
      process.send_signal(sig)
      time.sleep(0.05)
    _, rest = process.communicate(timeout=300)
  finally:
    process.kill()
  stderr = "".join(output) + rest
  errors = [line for line in stderr.splitlines() if line.startswith("error:")]
  assert process.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
  assert len(errors) == 1 and re.match(r"error: (interrupted|stopped by SIGTERM)", errors[0]), (
      stderr[-3000:])
