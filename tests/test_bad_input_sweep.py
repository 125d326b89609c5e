"""The bad-input sweep: every command-line tool of the package, fed a table of mistakes through
its real entry point in a subprocess, must end with exactly one `error:` line naming the problem,
exit status 2 and no traceback. docs/reliability.md's bad-input table lists the same classes.

The fast tier runs one case of each class; the slow tier runs them all (each case is a fresh
interpreter, ~2 s). A second table (DAMAGED) feeds the tools that read a workdir damaged copies of
one: a finished run's text files (fast) or one tiny run trained once per module (slow).
"""

import json
import os
import re
import shutil
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


# ---------------------------------------------------------------------------------------------
# Damaged workdirs: every tool that reads a workdir, fed one with a file cut short, not JSON, of
# another version, or a checkpoint that does not read back. Each case ends in exit status 2 and
# one `error: FILE: what is wrong; remedy` line, or in a safe recovery (exit 0) with one warning;
# either way what the workdir held is still there, byte for byte, under its name or the name it
# was set aside as (NAME.unreadable).

TINY_RUN = ["--config=cifar10_rwl", "--config.num_epochs=2", "--config.global_batch_size=32",
            "--config.model.encoder=resnet10", "--config.model.width=4",
            "--config.model.projector_dims=(16,8)", "--config.data.max_train_examples=64",
            "--config.data.max_eval_examples=64", "--config.log_every_steps=1",
            "--config.eval.linear_epochs=1", "--config.eval.probe_batch_size=0",
            "--config.checkpoint_every_epochs=1"]


def tiny_run_flags(data, cache):
  return TINY_RUN + [f"--config.data.image_dir={data}", f"--config.data.cache_dir={cache}"]


def run_tool(module, *args, cwd):
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def trained_run(cifar_dir, tmp_path_factory):
  """The tiny run (2 epochs of 2 steps: checkpoints 2 and 4), trained once through the real
  command line; cases damage copies of it."""
  root = tmp_path_factory.mktemp("damaged")
  done = run_tool("rwl_jax.main", f"--workdir={root / 'run'}",
                  *tiny_run_flags(cifar_dir, root / "cache"), cwd=root)
  assert done.returncode == 0, done.stderr[-3000:]
  return root / "run", tiny_run_flags(cifar_dir, root / "cache")


def written_run(workdir):
  """A finished run's text files, without checkpoints (enough for what fails or recovers before
  a checkpoint is read): config.json as train writes it, results.json, metrics.jsonl."""
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top

  workdir.mkdir()
  config = tiny_config(workdir.parent / "no_images", workdir.parent / "cache")
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  (workdir / "results.json").write_text(json.dumps(
      {"method": "rwl", "epochs": 2, "knn_top1": 0.2, "linear_top1": 0.25,
       "images_per_second": 300.0, "seconds_per_epoch": 0.5, "config": config.to_dict()},
      indent=2, default=str))
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
      {"step": 0, "time": 10.0, "run_seconds": 1.0, "knn_top1": 0.1},
      {"step": 2, "time": 11.0, "run_seconds": 2.0, "loss": 3.0},
      {"step": 4, "time": 12.0, "run_seconds": 3.0, "loss": 2.5, "knn_top1": 0.2}]))


def cut_short(name, keep=0.5):
  def damage(workdir):
    data = (workdir / name).read_bytes()
    (workdir / name).write_bytes(data[:int(len(data) * keep)])
  return damage


def replaced(name, data):
  def damage(workdir):
    (workdir / name).write_bytes(data)
  return damage


def edited(name, old, new):
  def damage(workdir):
    text = (workdir / name).read_text()
    assert old in text
    (workdir / name).write_text(text.replace(old, new, 1))
  return damage


def torn_last_line(name):
  def damage(workdir):
    with open(workdir / name, "a") as handle:
      handle.write('{"step": 9, "time": 1')  # killed mid-write
  return damage


def checkpoint_files(workdir, step, kind):
  folder = workdir / "checkpoints" / str(step) / "default"
  if kind == "metadata":
    return [folder / "_METADATA"]
  return [p for p in folder.rglob("*") if p.is_file() and "/d/" in str(p)]  # the array data


def lost_metadata(*steps):
  def damage(workdir):
    for step in steps:
      checkpoint_files(workdir, step, "metadata")[0].unlink()
  return damage


def truncated_arrays(step):
  def damage(workdir):
    for path in checkpoint_files(workdir, step, "arrays"):
      path.write_bytes(path.read_bytes()[:16])
  return damage


def garbage_lock(workdir):
  (workdir / "lock").write_bytes(b"\x00\x17not a lock")
  old = time.time() - 60  # left by a crash a minute ago, not being written now
  os.utime(workdir / "lock", (old, old))


def set_aside_earlier(workdir):
  (workdir / "checkpoints" / "4.unreadable" / "default").mkdir(parents=True)
  (workdir / "checkpoints" / "4.unreadable" / "default" / "manifest.ocdbt").write_bytes(b"\0" * 8)


def workdir_is_a_file(workdir):
  workdir.write_text("results\n")


def emptied(workdir):
  workdir.mkdir()


def every_damage(*damages):
  def damage(workdir):
    for each in damages:
      each(workdir)
  return damage


OUT = "--out={tmp}/encoder.safetensors"  # export writes outside the workdir: its bytes stay
EVALUATE = ("rwl_jax.evaluate", ["--nolinear"])
EXPORT = ("rwl_jax.export", [OUT])
REPORT = ("rwl_jax.report", [])
RERUN = ("rwl_jax.main", ["{run_flags}"])  # the run's own training command again
NOT_JSON = b"\x89PNG\r\n\x1a\n\x00\x00 not json"
CUT = r"is cut short \(.*: line \d+ column \d+\)"
RESTORE_CONFIG = r"; restore it from a copy \(a finished run's results.json holds one under "
REWRITE_RESULTS = r"; rerun the training command on this --workdir to write it again"
# (case, (module, args), damage, ("error"|"warning", regex), {damaged: set-aside name} or None
#  when nothing may change, what workdir: "written" (text files only) or "trained", fast tier)
DAMAGED = [
    # config.json: cut short, not JSON, not an object, a setting of another type, unknown ones.
    ("evaluate: config.json cut short", EVALUATE, cut_short("config.json"),
     ("error", rf"config.json: {CUT}{RESTORE_CONFIG}"), None, "written", True),
    ("export: config.json cut short", EXPORT, cut_short("config.json", 0.1),
     ("error", rf"config.json: {CUT}{RESTORE_CONFIG}"), None, "written", False),
    ("evaluate: config.json not JSON", EVALUATE, replaced("config.json", NOT_JSON),
     ("error", r"config.json: is not text \(byte 0 is not UTF-8\)" + RESTORE_CONFIG), None,
     "written", False),
    ("export: config.json a list", EXPORT, replaced("config.json", b"[1, 2]\n"),
     ("error", r"config.json: holds a JSON list, not a config \(an object of settings\)"), None,
     "written", False),
    ("export: config.json of another version", EXPORT,
     edited("config.json", '"width": 8', '"width": "wide"'),
     ("error", r"config.json: not a config this rwl_jax can use \(model.width must be an integer, "
               r"got 'wide'\); it was written by another rwl_jax version"), None, "written", False),
    ("export: config.json of a newer version", EXPORT,
     edited("config.json", '"method": "rwl"', '"method": "rwl", "future": {"knob": 1}'),
     ("warning", r"config.json has settings this rwl_jax does not know, ignored: future.knob"),
     {}, "trained", False),
    ("rerun: config.json cut short, with checkpoints", RERUN, cut_short("config.json"),
     ("error", rf"config.json: {CUT}; so this rerun cannot be checked against the run it "
               r"continues: .*or pass --accept_config_change"), None, "trained", False),
    # results.json and metrics.jsonl (report; train's rerun below).
    ("report: results.json cut short", REPORT, cut_short("results.json"),
     ("error", rf"results.json: {CUT}{REWRITE_RESULTS}.*or leave it out of --workdirs"), None,
     "written", True),
    ("report: results.json of another version", REPORT,
     edited("results.json", '"knn_top1": 0.2', '"knn_top1": "20%"'),
     ("error", r"results.json: knn_top1 is '20%', not a number \(written by another rwl_jax "
               r"version, or edited\?\)" + REWRITE_RESULTS), None, "written", False),
    ("report: metrics.jsonl with a torn last line", REPORT, torn_last_line("metrics.jsonl"),
     ("warning", r"metrics.jsonl line 4 is not a metrics row \(a write cut short\?\); skipped"), {},
     "written", True),
    ("report: metrics.jsonl of garbage", REPORT, replaced("metrics.jsonl", NOT_JSON * 3),
     ("error", r"metrics.jsonl has no rows: the run logged nothing readable"), None, "written",
     False),
    # The rerun of a finished run (it resumes at its last checkpoint and only evaluates): a
    # damaged config.json (--accept_config_change), results.json and history are set aside or
    # kept, a lock of garbage is taken over, metrics.jsonl's torn line is dropped by its trim.
    ("rerun: every text file damaged", ("rwl_jax.main", ["{run_flags}", "--accept_config_change"]),
     every_damage(cut_short("config.json"), cut_short("results.json"), garbage_lock,
                  torn_last_line("metrics.jsonl"), replaced("config_history.jsonl", b'{"step": 4')),
     ("warning", r"taking over the lock of .*: it does not parse as a lock",
      r"config.json is cut short .*goes on with this command's settings \(--accept_config_change",
      r"config.json is cut short .*: set aside as config.json.unreadable",
      r"results.json is cut short .*; kept as results.json.unreadable, and this run writes a new",
      r"metrics.jsonl line \d+ is not a metrics row",
      r"config_history.jsonl: its last line is cut"),
     {"config.json": "config.json.unreadable", "results.json": "results.json.unreadable",
      "lock": None, "metrics.jsonl": None, "config_history.jsonl": "+"}, "trained", False),
    # Checkpoints: the newest without its metadata or with its arrays cut short is set aside and
    # the previous one used; none left that reads back is one line saying so.
    ("export: newest checkpoint without its metadata", EXPORT, lost_metadata(4),
     ("warning", r"checkpoints/4 is unreadable \(.*its metadata file is missing\); kept as "
                 r"4.unreadable"), {"checkpoints/4": "checkpoints/4.unreadable"}, "trained", False),
    ("export: newest checkpoint's arrays cut short", EXPORT, truncated_arrays(4),
     ("warning", r"checkpoints/4 is unreadable \(.*damaged"),
     {"checkpoints/4": "checkpoints/4.unreadable"}, "trained", False),
    ("export: no checkpoint reads back", EXPORT, lost_metadata(4, 2),
     ("error", r"checkpoints: no checkpoint reads back \(4.unreadable, 2.unreadable set aside as "
               r"damaged\); train again in a new --workdir, or move them out"),
     {"checkpoints/4": "checkpoints/4.unreadable", "checkpoints/2": "checkpoints/2.unreadable"},
     "trained", False),
    ("export: --step of a damaged checkpoint", ("rwl_jax.export", [OUT, "--step=4"]),
     lost_metadata(4), ("error", r"checkpoints/4 is damaged: its metadata file is missing; use "
                                 r"another --step \(have \[2, 4\]\), or leave it out"),
     None, "trained", False),
    ("export: only checkpoints set aside earlier", EXPORT, set_aside_earlier,
     ("error", r"checkpoints: no checkpoint reads back \(4.unreadable set aside as damaged\)"),
     None, "written", True),
    # Not a run's folder at all.
    ("export: workdir is a file", EXPORT, workdir_is_a_file,
     ("error", r"--workdir .*run is a file, not a folder"), None, None, False),
    ("evaluate: workdir is a file", EVALUATE, workdir_is_a_file,
     ("error", r"--workdir .*run is a file, not a folder"), None, None, False),
    ("report: workdir is a file", REPORT, workdir_is_a_file,
     ("error", r"--workdirs .*run is a file, not a run's folder"), None, None, True),
    ("export: empty workdir", EXPORT, emptied,
     ("error", r"run/config.json not found: --workdir must be a directory a training run wrote"),
     None, None, False),
    ("report: empty workdir", REPORT, emptied,
     ("error", r"run/results.json not found: .*run is not a finished run"), None, None, False),
]


def snapshot(root):
  """{relative path: bytes} of every file under root (root itself if it is a file)."""
  if root.is_file():
    return {".": root.read_bytes()}
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def moved(files, renames):
  """files as they should be after renames {old: new} (new None: may go) of files or folders."""
  result = {}
  for name, data in files.items():
    for old, new in renames.items():
      if name == old or name.startswith(old + "/"):
        if new is not None:
          result[new + name[len(old):]] = data
        break
    else:
      result[name] = data
  return result


@pytest.mark.parametrize(
    "case, tool, damage, said, renames, start",
    [pytest.param(*case[:6], id=case[0], marks=() if case[6] else slow) for case in DAMAGED])
def test_damaged_workdir_is_one_line_or_a_safe_recovery(case, tool, damage, said, renames,
                                                        start, tmp_path, request):
  workdir, run_flags = tmp_path / "run", []
  if start == "trained":
    trained, run_flags = request.getfixturevalue("trained_run")
    shutil.copytree(trained, workdir)
  elif start == "written":
    written_run(workdir)
  damage(workdir)
  before = snapshot(workdir)
  module, args = tool
  workdir_flag = "--workdirs" if module == "rwl_jax.report" else "--workdir"
  argv = [f"{workdir_flag}={workdir}"]
  for arg in args:
    argv += run_flags if arg == "{run_flags}" else [arg.replace("{tmp}", str(tmp_path))]
  done = run_tool(module, *argv, cwd=tmp_path)
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert "Traceback" not in done.stderr, done.stderr[-3000:]
  kind, *patterns = said
  if kind == "error":
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert re.search(patterns[0], errors[0]), errors[0]
  else:
    assert done.returncode == 0 and not errors, done.stderr[-3000:]
    for pattern in patterns:  # each damaged file: one warning
      warned = [line for line in done.stderr.splitlines() if re.search(pattern, line)]
      assert len(warned) == 1, (pattern, done.stderr[-3000:])
  after = snapshot(workdir)
  if renames is None:  # refused: nothing in the workdir changed
    assert after == before
    return
  # Recovered: every file it held is still there, damaged ones under their new names ("+": kept
  # as the start of the file, which was appended to).
  expected = moved(before, {old: None if new == "+" else new for old, new in renames.items()})
  assert {name: after.get(name) for name in expected} == expected
  for old, new in renames.items():
    if new == "+":
      assert after[old].startswith(before[old]) and len(after[old]) > len(before[old])
    elif new is not None and not old.startswith("checkpoints/"):
      assert old in after  # written again, whole
