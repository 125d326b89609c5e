"""launch/gpu_check.py: the image parts restore pixel for pixel (and damage is caught), and both
GPU stages run end to end as dry runs on the CPU with TensorFlow unimportable, as on the GPU image."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "launch"))  # a script, not a package module
import gpu_check  # pylint: disable=g-import-not-at-top,wrong-import-position

# On PYTHONPATH, this makes TensorFlow absent as it is on the GPU image: the path finder no longer
# sees it, so `import tensorflow` fails and importlib.util.find_spec("tensorflow") is None (etils
# asks that), in this process and in every process it starts.
_NO_TENSORFLOW = '''
import importlib.machinery
import sys


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.partition(".")[0] in ("tensorflow", "tensorflow_datasets"):
      return None
    return super().find_spec(name, path, target)


sys.meta_path[:] = [_PathFinderWithoutTensorFlow if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
'''


def small_copy(cifar_dir: pathlib.Path, destination: pathlib.Path, per_class: dict[str, int]):
  """The first per_class[split] PNGs of each class of cifar_dir, copied under destination."""
  for split, count in per_class.items():
    for class_dir in sorted((cifar_dir / split).iterdir()):
      for path in sorted(class_dir.glob("*.png"))[:count]:
        target = destination / split / class_dir.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
  return destination


def pixels(path: pathlib.Path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"))


@pytest.fixture
def packed(cifar_dir, tmp_path):
  source = small_copy(cifar_dir, tmp_path / "png", {"train": 3, "test": 2})
  folders = gpu_check.pack(source, tmp_path / "parts", workers=1)
  return source, folders, tmp_path / "images"


def test_two_parts_restore_every_pixel_of_the_png_copy(packed):
  source, folders, images = packed
  assert [f.name for f in folders] == ["part0", "part1"]
  indexes = [gpu_check.unpack_part(folder, n, images, workers=1) for n, folder in enumerate(folders)]
  assert all(len(index["files"]) > 0 for index in indexes)
  assert gpu_check.check_folder(images, indexes, workers=1) == {"train": 30, "test": 20}
  # Read directly, every restored image is the PNG's pixels, under the same name stem (so the
  # image folder sorts the same way).
  pngs = sorted(source.glob("*/*/*.png"))
  restored = sorted(images.glob("*/*/*"))
  assert [p.relative_to(source).with_suffix("") for p in pngs] == \
         [p.relative_to(images).with_suffix("") for p in restored]
  for png, webp in zip(pngs, restored):
    np.testing.assert_array_equal(pixels(png), pixels(webp))


def test_the_restored_folder_gives_training_the_png_copys_arrays_in_its_order(packed, tmp_path):
  from rwl_jax.data import image_folder  # pylint: disable=g-import-not-at-top

  source, folders, images = packed
  for number, folder in enumerate(folders):
    gpu_check.unpack_part(folder, number, images, workers=1)
  for split in ("train", "test"):
    png, webp = (
        image_folder.ImageFolderSource(str(root), split, image_size=32,
                                       cache_dir=str(tmp_path / f"cache_{root.name}")).read()
        for root in (source, images))
    np.testing.assert_array_equal(png.images, webp.images)
    np.testing.assert_array_equal(png.labels, webp.labels)
    assert png.class_names == webp.class_names


def test_a_corrupted_part_is_caught(packed):
  _, folders, images = packed
  blob = folders[1] / gpu_check.BLOB_NAME
  data = bytearray(blob.read_bytes())
  data[len(data) // 2] ^= 0x01
  blob.write_bytes(bytes(data))
  with pytest.raises(gpu_check.Failure, match="part 1 is corrupted"):
    gpu_check.unpack_part(folders[1], 1, images, workers=1)


def test_a_changed_missing_or_extra_image_fails_the_folder_check(packed):
  _, folders, images = packed
  indexes = [gpu_check.unpack_part(folder, n, images, workers=1) for n, folder in enumerate(folders)]
  first, second = (images / rel for rel, _ in indexes[0]["files"][:2])
  original = first.read_bytes()
  first.write_bytes(second.read_bytes())  # a valid image, but not this one
  split = first.relative_to(images).parts[0]
  with pytest.raises(gpu_check.Failure, match=f"pixels of .*{split} differ"):
    gpu_check.check_folder(images, indexes, workers=1)
  first.write_bytes(original)
  shutil.copy(second, second.with_name("extra.webp"))
  count = {"train": 30, "test": 20}[split]
  with pytest.raises(gpu_check.Failure, match=f"holds {count + 1} images, the PNG copy {count}"):
    gpu_check.check_folder(images, indexes, workers=1)
  with pytest.raises(gpu_check.Failure, match="different prepare runs"):
    other = dict(indexes[1], splits={"train": {"count": 1, "pixel_sha256": "0"}})
    gpu_check.check_folder(images, [indexes[0], other], workers=1)


def test_images_too_large_for_two_parts_are_refused(cifar_dir, tmp_path):
  source = small_copy(cifar_dir, tmp_path / "png", {"train": 1, "test": 1})
  with pytest.raises(gpu_check.Failure, match="two parts of at most 0.001 MiB"):
    gpu_check.pack(source, tmp_path / "parts", max_part_mib=0.001, workers=1)


def test_prepare_prints_the_two_calls_with_their_carry_lists(cifar_dir, tmp_path, capsys):
  source = small_copy(cifar_dir, tmp_path / "png", {"train": 2, "test": 1})
  parts = REPO / ".data" / f"test-gpu-parts-{os.getpid()}"  # ignored by git, as carried paths must be
  try:
    assert gpu_check.main(["prepare", f"--source={source}", f"--parts={parts}", "--no-wheels",
                           "--workers=1"]) == 0
    printed = capsys.readouterr().out
    # Again: the intact parts are kept, not made again; a damaged one is made again.
    made = (parts / "part1" / gpu_check.BLOB_NAME).stat().st_mtime_ns
    assert gpu_check.main(["prepare", f"--source={source}", f"--parts={parts}", "--no-wheels",
                           "--workers=1"]) == 0
    assert "reusing the parts" in capsys.readouterr().out
    assert (parts / "part1" / gpu_check.BLOB_NAME).stat().st_mtime_ns == made
    with (parts / "part1" / gpu_check.BLOB_NAME).open("ab") as blob:
      blob.write(b"x")
    assert gpu_check.main(["prepare", f"--source={source}", f"--parts={parts}", "--no-wheels",
                           "--workers=1"]) == 0
    assert "reusing" not in capsys.readouterr().out
    assert gpu_check.unpack_part(parts / "part1", 1, tmp_path / "images", workers=1)
  finally:
    shutil.rmtree(parts, ignore_errors=True)
  calls = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
  relative = parts.relative_to(REPO).as_posix()
  assert [c["carry"][-1] for c in calls] == [f"{relative}/part0", f"{relative}/part1"]
  assert [c["command"].split("gpu_check.py ")[1] for c in calls] == [
      f"stage1 --parts={relative}", f"stage2 --parts={relative}"]
  assert all(len(c["command"]) <= 2000 and c["timeout_s"] <= 600 for c in calls)


def test_prepare_refuses_parts_that_cannot_be_carried_before_packing(tmp_path, capsys):
  status = gpu_check.main(["prepare", f"--source={tmp_path}", f"--parts={tmp_path / 'parts'}",
                           "--no-wheels", "--workers=1"])
  error = capsys.readouterr().err
  assert status == 2 and error.count("\n") == 1 and "outside the repository" in error
  assert not (tmp_path / "parts").exists()


def test_stage2_on_a_fresh_machine_says_to_run_stage1_first(tmp_path, capsys):
  status = gpu_check.main(["stage2", "--dry-run", f"--work={tmp_path / 'work'}",
                           f"--out={tmp_path / 'out'}"])
  error = capsys.readouterr().err
  assert status == 2 and error.startswith("error: part 0 is not on this machine")
  assert error.count("\n") == 1
  assert "error: part 0" in (tmp_path / "out" / "stage2.log").read_text()


@pytest.mark.parametrize("argv, message", [
    (["stage1", "--out=x", "--", "--steps=3"], "must be --config.FIELD=VALUE"),
    (["stage1", "--dry-run"], "set $OUT or pass --out"),
    (["stage3"], "invalid choice"),
])
def test_bad_arguments_are_one_error_line(argv, message, capsys, monkeypatch):
  monkeypatch.delenv("OUT", raising=False)
  assert gpu_check.main(argv) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and message in error


def _running(pid: int) -> bool:
  try:
    return pathlib.Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
  except OSError:
    return False


def test_a_command_past_the_stage_budget_is_stopped_with_what_it_started(tmp_path):
  # The command starts a process of its own (as a training run's helpers would): both are stopped.
  code = ("import subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
          "'import time; time.sleep(300)'], stdout=subprocess.DEVNULL, "
          "stderr=subprocess.DEVNULL); "
          "print('child', child.pid, flush=True); time.sleep(300)")
  stage = gpu_check.Stage("stage1", tmp_path, budget_s=2)
  with pytest.raises(gpu_check.Failure, match="sleeper stopped at the stage's 2 s budget"):
    stage.run("sleeper", [sys.executable, "-c", code], dict(os.environ))
  stage.close()
  line = next(l for l in (tmp_path / "stage1.log").read_text().splitlines() if l.startswith("child"))
  pid = int(line.split()[1])
  try:
    for _ in range(50):
      if not _running(pid):
        break
      time.sleep(0.1)
    assert not _running(pid)
  finally:
    if _running(pid):
      os.kill(pid, 9)


def _wheel(directory: pathlib.Path, name: str) -> pathlib.Path:
  """A minimal pure-Python wheel holding one module."""
  path = directory / f"{name}-1.0-py3-none-any.whl"
  info = f"{name}-1.0.dist-info"
  files = {f"{name}.py": "VALUE = 7\n",
           f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
           f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                            "Tag: py3-none-any\n"}
  files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
  directory.mkdir(parents=True, exist_ok=True)
  with zipfile.ZipFile(path, "w") as archive:
    for member, text in files.items():
      archive.writestr(member, text)
  return path


@pytest.mark.slow  # pip, then the wheels' modules imported (jax among them)
def test_carried_wheels_install_into_the_work_folder_only(tmp_path):
  _wheel(tmp_path / "whl", "rwl_gpu_check_probe")
  stage = gpu_check.Stage("stage1", tmp_path / "out", budget_s=300)
  env = gpu_check.install_wheels(stage, tmp_path / "whl", tmp_path / "site", gpu_check.DRY_RUN)
  stage.close()
  assert (tmp_path / "site" / "rwl_gpu_check_probe.py").exists()
  done = subprocess.run([sys.executable, "-c", "import rwl_gpu_check_probe as p; print(p.VALUE)"],
                        env=env, capture_output=True, text=True)
  assert done.stdout.strip() == "7", done.stderr
  assert importlib.util.find_spec("rwl_gpu_check_probe") is None  # not in this interpreter's


# ---- The two stages end to end, as dry runs -----------------------------------------------------


@pytest.fixture(scope="module")
def machine(cifar_dir, tmp_path_factory):
  """The repository's parts (from cifar_dir: 640 train, 160 test) and a TensorFlow-free env."""
  root = tmp_path_factory.mktemp("gpu_check")
  gpu_check.pack(cifar_dir, root / "parts")
  (root / "no_tf").mkdir()
  (root / "no_tf" / "sitecustomize.py").write_text(_NO_TENSORFLOW)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "no_tf"), str(REPO)]))
  env.pop("OUT", None)
  return root, env


def run_stage(machine, name: str, *extra: str, dry_run: bool = True) -> subprocess.CompletedProcess:
  root, env = machine
  out = root / f"out_{name}"
  shutil.rmtree(out, ignore_errors=True)
  return subprocess.run(
      [sys.executable, str(REPO / "launch" / "gpu_check.py"), name, *["--dry-run"][:dry_run],
       f"--parts={root / 'parts'}", f"--wheels={root / 'no_wheels'}", f"--work={root / 'work'}",
       f"--out={out}", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_stage1_dry_run_without_tensorflow(machine):
  root, env = machine
  blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env,
                           capture_output=True, text=True)
  assert "No module named 'tensorflow'" in blocked.stderr  # the blocker works
  # Without --dry-run, a machine without a GPU is told in seconds, before any image is written.
  on_cpu = run_stage(machine, "stage1", dry_run=False)
  assert on_cpu.returncode == 1 and on_cpu.stderr.count("\n") == 1
  assert on_cpu.stderr.startswith("error: jax failed") and "not gpu" in on_cpu.stderr
  assert not (root / "work" / "images").exists()
  # Two of the GPU list's variants (pallas runs interpreted on a CPU: too slow here), profiled.
  done = run_stage(machine, "stage1", "--variants=default;bn_fused:model.batchnorm=fused")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  out = root / "out_stage1"
  assert sorted(p.name for p in out.iterdir()) == [
      "bench_variants.json", "stage1.log", "stage1_timing.json"]
  bench = json.loads((out / "bench_variants.json").read_text())
  assert bench["devices"] == ["cpu"]
  assert [row["variant"] for row in bench["results"]] == ["default", "bn_fused"]
  assert all(row["images_per_second"] > 0 and row["profile"]["busy_ms_per_step"] > 0
             for row in bench["results"])
  timing = json.loads((out / "stage1_timing.json").read_text())
  assert list(timing["phases_s"]) == ["install wheels", "jax", "unpack part 0", "benchmark"]
  assert (root / "work" / "part0.json").exists()


@pytest.mark.slow
def test_stage2_dry_run_without_tensorflow(machine):
  root, _ = machine
  if not (root / "work" / "part0.json").exists():
    pytest.skip("needs test_stage1_dry_run_without_tensorflow's work folder")
  done = run_stage(machine, "stage2")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
  out = root / "out_stage2"
  assert sorted(p.name for p in out.iterdir()) == [
      "config.json", "metrics.jsonl", "results.json", "stage2.log", "stage2_timing.json"]
  results = json.loads((out / "results.json").read_text())
  assert results["train_examples"] == 640 and results["test_examples"] == 160
  assert 0 <= results["knn_top1"] <= 1 and 0 <= results["linear_top1"] <= 1
  config = json.loads((out / "config.json").read_text())
  assert config["data"]["augment_on"] == "device"
  assert config["data"]["image_dir"] == str(root / "work" / "images")
  timing = json.loads((out / "stage2_timing.json").read_text())
  assert timing["images"] == {"train": 640, "test": 160} and timing["train_wall_s"] > 0
  assert list(timing["phases_s"]) == ["install wheels", "jax", "unpack part 1", "pixel check",
                                      "train"]
  assert "every pixel equal to the PNG copy" in (out / "stage2.log").read_text()

  # A training command that fails: one error line naming it, and the stage's status is nonzero.
  failed = run_stage(machine, "stage2", "--", "--config.num_epochs=-1")
  assert failed.returncode != 0
  assert failed.stderr.count("\n") == 1 and failed.stderr.startswith("error: training failed")
