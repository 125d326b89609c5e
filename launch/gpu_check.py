#!/usr/bin/env python3
"""The whole GPU check on one lent H200: the benchmark variants, then a 20-epoch RWL run on the
lossless CIFAR-10 images, in two back-to-back calls of the device `run` tool (launch/README.md).

  python launch/gpu_check.py prepare      # here: wheels into .whl/, images into two parts
  python launch/gpu_check.py stage1       # on the GPU machine, call 1: wheels, part 0, benchmarks
  python launch/gpu_check.py stage2       # on the GPU machine, call 2: part 1, pixel check, training

The GPU machine has no network and no TensorFlow: the three missing wheels are carried, and the
images travel as WebP-lossless (about 1,770 bytes an image against PNG's 2,260), cut into two parts
that each fit one call beside the project. stage1 writes part 0's images to a folder outside the
repository (--work, default ~/rwl_gpu), which the warm machine keeps for the next call; stage2
adds part 1's and checks every pixel of both splits against the PNG copy before training.

`--dry-run` takes the same path on a CPU in seconds (smoke config, float32, 2 benchmark steps,
1 epoch), so everything but the GPU is tested here (tests/test_gpu_check.py).

This script needs only the standard library, numpy and Pillow: it runs before the wheels are in.
Its paths are local by nature (what `run` carries and what the lent machine's disk holds), so they
are plain pathlib paths. Bad input or a failed phase: one `error: ...` line, nonzero exit status.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import traceback
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------------
# What runs. Edit here.

# Missing from the GPU image (ml-collections, dm-pix, tensorboardX); the versions of the last
# session's run (/work/shared/gpu/2026-12-04-h200/README.md). Pure Python, ~0.2 MiB together.
WHEELS = ("ml-collections==1.1.0", "dm-pix==0.4.5", "tensorboardX==2.6.5")
WHEEL_MODULES = ("ml_collections", "dm_pix", "tensorboardX")

# rwl_jax.benchmark --variant values (NAME:key=value,...): each is compiled and timed in turn.
VARIANTS = (
    "default",
    "bn_fused:model.batchnorm=fused",
    "bn_pallas:model.batchnorm=pallas",
    "cmdbuf_off:xla.xla_gpu_enable_command_buffer=",
    "autotune4:xla.xla_gpu_autotune_level=4",
)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The commands' settings: the GPU run's, or the dry run's shrunk to seconds on a CPU."""
  config: str
  benchmark: tuple[str, ...]  # rwl_jax.benchmark flags besides --config, --variant, --output
  train: tuple[str, ...]  # rwl_jax.main flags besides --config, --workdir and the data paths
  env: tuple[tuple[str, str], ...] = ()
  platform: str = "gpu"  # what jax.default_backend() must say


GPU = Plan(
    config="configs/cifar10_rwl.py",
    benchmark=("--config.data.augment_on=device", "--config.model.dtype=bfloat16",
               "--steps=100", "--warmup=10"),
    train=("--config.data.augment_on=device", "--config.model.dtype=bfloat16",
           "--config.num_epochs=20", "--config.eval.knn_every_epochs=4"),
)
DRY_RUN = Plan(
    config="configs/cifar10_rwl.py:smoke",
    benchmark=("--config.data.augment_on=device", "--config.model.dtype=float32",
               "--steps=2", "--warmup=1"),
    train=("--config.data.augment_on=device", "--config.model.dtype=float32",
           "--config.num_epochs=1", "--config.eval.knn_every_epochs=1",
           "--config.eval.linear_epochs=1"),
    env=(("JAX_PLATFORMS", "cpu"),),
    platform="cpu",
)

REPO = pathlib.Path(__file__).resolve().parents[1]
PARTS_DIR = REPO / ".data" / "gpu_parts"
WHEEL_DIR = REPO / ".whl"
WORK_DIR = pathlib.Path("~/rwl_gpu").expanduser()
SHARED_DATA = pathlib.Path(os.environ.get("RWL_JAX_SHARED_DATA", REPO.parent / "shared" / "data"))
CARRY_LIMIT_BYTES = 64 * 2**20  # what one `run` call carries: tree + carried paths
MAX_PART_MIB = 55.0
BUDGET_S = 570  # under the call's 600 s, so the outputs are copied before the call is cut
INDEX_NAME, BLOB_NAME = "index.json", "images.bin"
FORMAT = "rwl-gpu-part-1"
SPLITS = ("train", "test")

# ------------------------------------------------------------------------------------------------


class Failure(Exception):
  """A one-line error: bad input (status 2) or a phase that failed (its status)."""

  def __init__(self, message: str, status: int = 2):
    super().__init__(message)
    self.status = status


class _InProcess:
  """A pool of one: map in this process."""

  def __enter__(self):
    return self

  def __exit__(self, *exc_info) -> None:
    return None

  def map(self, fn, items, chunksize: int = 1):
    del chunksize
    return map(fn, items)


def _pool(workers: int | None = None):
  """Forked worker processes (0 or None: one per core), or this process for one worker. The
  script runs no threads of its own, so forking it is safe; a caller that does run threads (a
  test process that has imported JAX) passes workers=1, since a fork of it can deadlock."""
  count = max(1, workers or os.cpu_count() or 1)
  return _InProcess() if count == 1 else concurrent.futures.ProcessPoolExecutor(count)


# ---- Packing: PNG copy -> two WebP-lossless parts ----------------------------------------------


def read_png_copy(source: pathlib.Path) -> list[tuple[str, bytes]]:
  """[(SPLIT/CLASS/NAME.png, PNG bytes)] sorted by path, from the shared tar parts
  (cifar10-png.tar.gz.part*) or from an unpacked SPLIT/CLASS/NAME.png folder."""
  tar_parts = sorted(source.glob("cifar10-png.tar.gz.part*"))
  files = []
  if tar_parts:
    joined = io.BytesIO(b"".join(p.read_bytes() for p in tar_parts))  # ~134 MB: fits in memory
    with tarfile.open(fileobj=joined, mode="r:gz") as archive:
      for member in archive:
        parts = pathlib.PurePosixPath(member.name).parts[-3:]
        if member.isfile() and member.name.endswith(".png") and len(parts) == 3 \
            and parts[0] in SPLITS:
          files.append(("/".join(parts), archive.extractfile(member).read()))
  elif any((source / split).is_dir() for split in SPLITS):
    for split in SPLITS:
      for path in sorted((source / split).glob("*/*.png")):
        files.append((path.relative_to(source).as_posix(), path.read_bytes()))
  if not files:
    raise Failure(f"no CIFAR-10 PNG copy in {source}: expected cifar10-png.tar.gz.part* or "
                  "SPLIT/CLASS/NAME.png (set --source)")
  return sorted(files)


def _encode(item: tuple[str, bytes]) -> tuple[str, bytes, bytes]:
  """(path, WebP-lossless bytes, RGB pixels); checks here that the WebP decodes to the same pixels."""
  rel, png = item
  with Image.open(io.BytesIO(png)) as image:
    pixels = np.asarray(image.convert("RGB"), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, "WEBP", lossless=True, quality=100, method=4)
  webp = buffer.getvalue()
  if not np.array_equal(_decode_bytes(webp), pixels):
    raise Failure(f"{rel}: WebP lossless does not give back the PNG's pixels")
  return rel, webp, pixels.tobytes()


def _decode_bytes(data: bytes) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as image:
    return np.asarray(image.convert("RGB"), np.uint8)


def _decode_file(path: str) -> bytes:
  with Image.open(path) as image:
    return np.asarray(image.convert("RGB"), np.uint8).tobytes()


def pack(source: pathlib.Path, parts_dir: pathlib.Path, *, max_part_mib: float = MAX_PART_MIB,
         workers: int | None = None) -> list[pathlib.Path]:
  """Writes parts_dir/part0 and part1 (each INDEX_NAME + BLOB_NAME) and returns their folders.

  The images are cut at an image boundary near half the bytes, so each part restores on its own.
  Each index holds its images' names (.webp, same stems: the image folder's order is the PNG
  copy's) and byte lengths, the blob's SHA-256, the SHA-256 of its images' decoded pixels, and
  for each split the count and SHA-256 of the whole split's pixels (the (N, H, W, 3) uint8 array
  in path order), the figure stage2 checks the restored folder against.
  """
  files = read_png_copy(source)
  encoded, split_hashes, counts = [], {}, collections.Counter()
  with _pool(workers) as pool:
    for rel, webp, pixels in pool.map(_encode, files, chunksize=64):
      split = rel.split("/")[0]
      encoded.append((rel[:-len(".png")] + ".webp", webp, pixels))
      split_hashes.setdefault(split, hashlib.sha256()).update(pixels)
      counts[split] += 1
  splits = {s: {"count": counts[s], "pixel_sha256": h.hexdigest()} for s, h in split_hashes.items()}
  total = sum(len(webp) for _, webp, _ in encoded)
  cumulative = np.cumsum([len(webp) for _, webp, _ in encoded])
  cut = int(np.searchsorted(cumulative, total / 2)) + 1 if len(encoded) > 1 else 1
  pieces = [encoded[:cut], encoded[cut:]]
  limit = int(max_part_mib * 2**20)
  sizes = [sum(len(w) for _, w, _ in piece) for piece in pieces]
  if max(sizes) > limit:
    raise Failure(f"{len(encoded)} images make {total / 2**20:.1f} MiB of WebP: two parts of at "
                  f"most {max_part_mib} MiB cannot hold them")
  folders = []
  for number, piece in enumerate(pieces):
    folder = parts_dir / f"part{number}"
    if folder.exists():
      shutil.rmtree(folder)
    folder.mkdir(parents=True)
    blob = b"".join(webp for _, webp, _ in piece)
    pixel_hash = hashlib.sha256()
    for _, _, pixels in piece:
      pixel_hash.update(pixels)
    (folder / BLOB_NAME).write_bytes(blob)
    index = {"format": FORMAT, "part": number, "parts": len(pieces),
             "files": [[rel, len(webp)] for rel, webp, _ in piece],
             "blob_sha256": hashlib.sha256(blob).hexdigest(),
             "pixel_sha256": pixel_hash.hexdigest(), "splits": splits}
    (folder / INDEX_NAME).write_text(json.dumps(index))
    folders.append(folder)
  return folders


# ---- Unpacking on the lent machine -------------------------------------------------------------


def read_index(folder: pathlib.Path, number: int) -> dict:
  path = folder / INDEX_NAME
  try:
    index = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise Failure(f"part {number} is not readable at {folder} ({type(error).__name__}): carry "
                  f"it in this call (python launch/gpu_check.py prepare prints the carry list)")
  if index.get("format") != FORMAT or index.get("part") != number:
    raise Failure(f"{path} is not part {number} of a {FORMAT} pack: run prepare again")
  return index


def unpack_part(folder: pathlib.Path, number: int, images_dir: pathlib.Path,
                workers: int | None = None) -> dict:
  """Writes part `number`'s images under images_dir, reads them back, checks their pixels
  against the index; returns the index."""
  index = read_index(folder, number)
  try:
    blob = (folder / BLOB_NAME).read_bytes()
  except OSError as error:
    raise Failure(f"part {number}'s {BLOB_NAME} is not readable in {folder}: {error}")
  if hashlib.sha256(blob).hexdigest() != index["blob_sha256"]:
    raise Failure(f"part {number} is corrupted ({folder / BLOB_NAME}: SHA-256 differs from its "
                  "index): run prepare again and carry it again")
  offset = 0
  for rel, length in index["files"]:
    path = images_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob[offset:offset + length])
    offset += length
  if pixel_sha256(images_dir, [rel for rel, _ in index["files"]], workers) != index["pixel_sha256"]:
    raise Failure(f"part {number}'s images, read back from {images_dir}, differ from the PNG copy")
  return index


def pixel_sha256(images_dir: pathlib.Path, rels: Sequence[str], workers: int | None = None) -> str:
  """SHA-256 of the files' decoded RGB uint8 pixels, concatenated in the given order."""
  digest = hashlib.sha256()
  with _pool(workers) as pool:
    for pixels in pool.map(_decode_file, [str(images_dir / rel) for rel in rels], chunksize=256):
      digest.update(pixels)
  return digest.hexdigest()


def check_folder(images_dir: pathlib.Path, indexes: Sequence[dict],
                 workers: int | None = None) -> dict[str, int]:
  """Checks that images_dir holds exactly the packed images and that each split's pixels are the
  PNG copy's (read back from disk, as training reads them); returns {split: count}."""
  if len({json.dumps(index["splits"], sort_keys=True) for index in indexes}) != 1:
    raise Failure("the parts on this machine come from different prepare runs: run prepare "
                  "again and both stages")
  rels = [rel for index in indexes for rel, _ in index["files"]]
  counts = {}
  for split, expected in indexes[0]["splits"].items():
    wanted = [rel for rel in rels if rel.split("/")[0] == split]
    on_disk = sum(1 for p in (images_dir / split).glob("*/*") if p.is_file())
    if len(wanted) != expected["count"] or on_disk != expected["count"]:
      raise Failure(f"{images_dir / split} holds {on_disk} images, the PNG copy "
                    f"{expected['count']}: remove {images_dir} and run both stages again")
    if pixel_sha256(images_dir, wanted, workers) != expected["pixel_sha256"]:
      raise Failure(f"the pixels of {images_dir / split} differ from the PNG copy's")
    counts[split] = len(wanted)
  return counts


# ---- Wheels ------------------------------------------------------------------------------------


def _wheel_key(name: str) -> str:
  return re.sub(r"[-_.]+", "_", name).lower()


def wheel_files(wheel_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []


def download_wheels(wheel_dir: pathlib.Path, requirements: Iterable[str] = WHEELS) -> None:
  """pip-downloads each requirement's Python 3.12 x86-64 wheel into wheel_dir unless it is there."""
  wheel_dir.mkdir(parents=True, exist_ok=True)
  for requirement in requirements:
    name, version = requirement.split("==")
    present = [p.name for p in wheel_files(wheel_dir) if p.name.lower().startswith(_wheel_key(name) + "-")]
    if any(n.lower().startswith(f"{_wheel_key(name)}-{version}-") for n in present):
      continue
    if present:  # two versions of one package stop the whole install there
      raise Failure(f"{wheel_dir} holds {present} but {requirement} is wanted: remove them")
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64") for a in ("--platform", p)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                           "--only-binary=:all:", "--python-version", "3.12", "--implementation",
                           "cp", *platforms, "-d", str(wheel_dir), requirement],
                          capture_output=True, text=True)
    if done.returncode:
      raise Failure(f"pip download {requirement} failed: {_last_line(done.stderr)}", 1)


def _last_line(text: str) -> str:
  lines = [line for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else "(no output)"


# ---- Sizes of a call ---------------------------------------------------------------------------


def _tree_bytes(paths: Iterable[pathlib.Path]) -> int:
  total = 0
  for path in paths:
    if path.is_file():
      total += path.stat().st_size
    elif path.is_dir():
      total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
  return total


def travelling_tree_bytes(repo: pathlib.Path = REPO) -> int | None:
  """Bytes of the files every call sends (tracked + untracked-not-ignored), None without git."""
  try:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=repo, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  return _tree_bytes(repo / name for name in listed.decode().split("\0") if name)


def carry_path(path: pathlib.Path, repo: pathlib.Path = REPO) -> str:
  """path relative to the repository, checked to be ignored by git (an unignored part would travel
  in every call, both parts together over the limit)."""
  try:
    relative = path.resolve().relative_to(repo)
  except ValueError:
    raise Failure(f"{path} is outside the repository {repo}: only paths inside it can be carried")
  # A trailing '/': a folder not made yet still matches a folder pattern such as /.whl/.
  try:
    ignored = subprocess.run(["git", "check-ignore", "-q", relative.as_posix() + "/"],
                             cwd=repo).returncode == 0
  except OSError as error:
    raise Failure(f"git is needed to check that {relative} is ignored: {error}")
  if not ignored:
    raise Failure(f"{relative} is not ignored by git: add it to .gitignore")
  return relative.as_posix()


# ---- Stages ------------------------------------------------------------------------------------


class Stage:
  """One stage's clock, log ($OUT/NAME.log: its phases and its commands' output) and budget."""

  def __init__(self, name: str, out: pathlib.Path, budget_s: float):
    self.name, self.out, self.start = name, out, time.monotonic()
    self.deadline = self.start + budget_s
    out.mkdir(parents=True, exist_ok=True)
    self.log_path = out / f"{name}.log"
    self._log = self.log_path.open("a", buffering=1)
    self.phases: dict[str, float] = {}

  def write(self, line: str) -> None:
    print(line, flush=True)
    self._log.write(line + "\n")

  def say(self, message: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%SZ")
    self.write(f"[{now} +{time.monotonic() - self.start:6.1f}s] {self.name}: {message}")

  @contextlib.contextmanager
  def phase(self, name: str):
    self.say(f"{name} ...")
    began = time.monotonic()
    try:
      yield
    finally:
      self.phases[name] = round(time.monotonic() - began, 2)
      self.say(f"{name}: {self.phases[name]:.1f} s")

  def run(self, what: str, argv: Sequence[str], env: dict[str, str]) -> None:
    """Runs a command in the repository root, its output into the log as it comes; stops it at
    the stage's deadline."""
    self.write("$ " + " ".join(argv))
    remaining = self.deadline - time.monotonic()
    if remaining <= 0:
      raise Failure(f"{what}: no time left in the stage's budget", 1)
    # Its own process group (same session, so a call cut short still ends it): stopping it at the
    # deadline stops whatever it started too, and the pipe closes.
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace",
                               process_group=0)
    expired = threading.Event()

    def stop():
      expired.set()
      with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(remaining, stop)
    timer.start()
    last = ""
    try:
      for line in process.stdout:
        self.write(line.rstrip("\n"))
        last = line.strip() or last
      status = process.wait()
    finally:
      timer.cancel()
    if expired.is_set():
      raise Failure(f"{what} stopped at the stage's {self.deadline - self.start:.0f} s budget", 1)
    if status:
      raise Failure(f"{what} failed (exit status {status}): {last}", status if status > 0 else 1)

  def finish(self, extra: dict) -> None:
    timing = {"stage": self.name, "phases_s": self.phases,
              "total_s": round(time.monotonic() - self.start, 2), **extra}
    (self.out / f"{self.name}_timing.json").write_text(json.dumps(timing, indent=2))
    self.say(f"done in {timing['total_s']:.1f} s; phases {json.dumps(self.phases)}")

  def close(self) -> None:
    self._log.close()


def child_env(site: pathlib.Path, plan: Plan) -> dict[str, str]:
  """The commands' environment: the carried wheels first, then the repository."""
  env = dict(os.environ, PYTHONUNBUFFERED="1", **dict(plan.env))
  env["PYTHONPATH"] = os.pathsep.join(
      p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
  return env


def install_wheels(stage: Stage, wheel_dir: pathlib.Path, site: pathlib.Path, plan: Plan) -> dict:
  """Installs the carried wheels into `site` (nothing outside it changes), or uses what an
  earlier stage installed or the interpreter already has; then checks they import."""
  wheels = wheel_files(wheel_dir)
  if wheels:
    stage.run("pip install", [sys.executable, "-m", "pip", "install", "-q", "--no-index",
                              "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                              "--target", str(site), *map(str, wheels)], os.environ.copy())
  else:
    stage.say(f"no wheels in {wheel_dir}: using what {site} or this Python already has")
  env = child_env(site, plan)
  stage.run("importing the wheels' modules",
            [sys.executable, "-c", f"import {', '.join(WHEEL_MODULES)}"], env)
  return env


def check_platform(stage: Stage, env: dict[str, str], plan: Plan) -> None:
  """Fails fast (seconds, not a compile later) where JAX does not see the wanted platform."""
  code = ("import jax, json; b = jax.default_backend(); print(json.dumps({'jax': jax.__version__, "
          "'backend': b, 'devices': [d.device_kind for d in jax.devices()]})); "
          f"raise SystemExit(0 if b == {plan.platform!r} else "
          f"f'jax runs on {{b}} here, not {plan.platform}')")
  stage.run("jax", [sys.executable, "-c", code], env)


def stage1(args, stage: Stage) -> None:
  plan = DRY_RUN if args.dry_run else GPU
  work, out = args.work, args.out
  with stage.phase("install wheels"):
    env = install_wheels(stage, args.wheels, work / "site", plan)
  with stage.phase("jax"):
    check_platform(stage, env, plan)
  with stage.phase("unpack part 0"):
    index = unpack_part(args.parts / "part0", 0, work / "images")
    (work / "part0.json").write_text(json.dumps(index))  # what stage2 checks the folder with
    stage.say(f"{len(index['files'])} images in {work / 'images'}, pixels equal to the PNG copy")
  variants = [v for v in args.variants.split(";") if v] if args.variants is not None else VARIANTS
  output = out / "bench_variants.json"
  argv = [sys.executable, "-m", "rwl_jax.benchmark", f"--config={plan.config}", *plan.benchmark,
          *(f"--variant={v}" for v in variants), *(["--profile"] if args.profile else []),
          f"--output={output}", *args.overrides]
  with stage.phase("benchmark"):
    stage.run("benchmark", argv, env)
  if not output.exists():
    raise Failure(f"the benchmark wrote no {output}", 1)
  stage.finish({"variants": list(variants), "dry_run": args.dry_run})


def stage2(args, stage: Stage) -> None:
  plan = DRY_RUN if args.dry_run else GPU
  work, out = args.work, args.out
  try:
    first = json.loads((work / "part0.json").read_text())
  except (OSError, ValueError):
    raise Failure(f"part 0 is not on this machine ({work / 'part0.json'} missing: a fresh "
                  "machine?): run stage1 first, then stage2 within 30 s")
  with stage.phase("install wheels"):
    env = install_wheels(stage, args.wheels, work / "site", plan)
  with stage.phase("jax"):  # else a run that lost its GPU would train on the CPU for hours
    check_platform(stage, env, plan)
  with stage.phase("unpack part 1"):
    second = unpack_part(args.parts / "part1", 1, work / "images")
  with stage.phase("pixel check"):
    counts = check_folder(work / "images", [first, second])
    stage.say(f"every pixel equal to the PNG copy: {counts}")
  workdir = work / "runs" / ("rwl-" + time.strftime("%Y%m%d-%H%M%S"))  # fresh: a clean timing
  argv = [sys.executable, "-m", "rwl_jax.main", f"--config={plan.config}", f"--workdir={workdir}",
          f"--config.data.image_dir={work / 'images'}", f"--config.data.cache_dir={work / 'cache'}",
          *plan.train, *args.overrides]
  began = time.monotonic()
  try:
    with stage.phase("train"):
      stage.run("training", argv, env)
  finally:
    train_wall_s = round(time.monotonic() - began, 2)
    for name in ("results.json", "metrics.jsonl", "config.json"):
      if (workdir / name).exists():
        shutil.copy2(workdir / name, out / name)
  if not (workdir / "results.json").exists():
    raise Failure(f"the training wrote no {workdir / 'results.json'}", 1)
  results = json.loads((workdir / "results.json").read_text())
  stage.say("results " + json.dumps({k: v for k, v in results.items()
                                     if isinstance(v, (int, float))}))
  stage.finish({"train_wall_s": train_wall_s, "workdir": str(workdir), "images": counts,
                "overrides": list(args.overrides), "dry_run": args.dry_run})


def existing_parts(parts_dir: pathlib.Path) -> list[pathlib.Path] | None:
  """The two part folders when both are there, from one pack, with blobs matching their indexes."""
  folders = [parts_dir / f"part{n}" for n in range(2)]
  try:
    indexes = [read_index(folder, n) for n, folder in enumerate(folders)]
  except Failure:
    return None
  same_pack = indexes[0]["splits"] == indexes[1]["splits"]
  intact = all((f / BLOB_NAME).is_file() and hashlib.sha256((f / BLOB_NAME).read_bytes())
               .hexdigest() == index["blob_sha256"] for f, index in zip(folders, indexes))
  return folders if same_pack and intact else None


def prepare(args) -> None:
  began = time.monotonic()
  for path in (args.parts, args.wheels):  # before the minutes of packing, not after
    carry_path(path)
  if args.wheels_download:
    download_wheels(args.wheels)
    print(f"wheels: {', '.join(p.name for p in wheel_files(args.wheels))}")
  folders = None if args.repack else existing_parts(args.parts)
  if folders:
    print(f"reusing the parts in {args.parts} (their checksums hold; --repack to make them again)")
  else:
    folders = pack(args.source, args.parts, max_part_mib=args.max_part_mib, workers=args.workers)
  sizes = [_tree_bytes([f]) for f in folders]
  print(f"parts ready in {time.monotonic() - began:.0f} s: " + ", ".join(
      f"{f.name} {s / 2**20:.1f} MiB" for f, s in zip(folders, sizes)))
  tree = travelling_tree_bytes()
  wheels = _tree_bytes([args.wheels])
  carry_wheels = [carry_path(args.wheels)] if wheel_files(args.wheels) else []
  flags = "".join(f" --{name}={carry_path(path)}" for name, path, default in
                  (("parts", args.parts, PARTS_DIR), ("wheels", args.wheels, WHEEL_DIR))
                  if path.resolve() != default)
  for number, (folder, size) in enumerate(zip(folders, sizes)):
    total = (tree or 0) + wheels + size
    if tree is not None and total > CARRY_LIMIT_BYTES:
      raise Failure(f"call {number + 1} would send {total / 2**20:.1f} MiB, over the 64 MiB "
                    "limit: prepare with a smaller --max-part-mib")
    when = "first (benchmarks)" if number == 0 else "second, within 30 s of the first's end"
    print(f"\ncall {number + 1}, {when}; sends {total / 2**20:.1f} MiB"
          f"{'' if tree is not None else ' + the tree (no git here to size it)'}:")
    print(json.dumps({"carry": carry_wheels + [carry_path(folder)], "timeout_s": 600,
                      "command": f"PYTHONUNBUFFERED=1 python3 launch/gpu_check.py "
                                 f"stage{number + 1}{flags}"}))
  print("\nthen give_back. Outputs: $OUT/stage1.log, bench_variants.json, stage1_timing.json; "
        "$OUT/stage2.log, results.json, metrics.jsonl, config.json, stage2_timing.json")


# ---- Command line ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one `error:` line (status 2), not argparse's usage block
    raise Failure(f"{self.prog}: {message}")


def parse(argv: Sequence[str]) -> argparse.Namespace:
  parser = _Parser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)
  prep = commands.add_parser("prepare", help="here: wheels and the two image parts")
  prep.add_argument("--source", type=pathlib.Path, default=SHARED_DATA,
                    help="the PNG copy: cifar10-png.tar.gz.part* or SPLIT/CLASS/NAME.png")
  prep.add_argument("--parts", type=pathlib.Path, default=PARTS_DIR)
  prep.add_argument("--wheels", type=pathlib.Path, default=WHEEL_DIR)
  prep.add_argument("--no-wheels", dest="wheels_download", action="store_false",
                    help="do not download the wheels")
  prep.add_argument("--max-part-mib", type=float, default=MAX_PART_MIB)
  prep.add_argument("--workers", type=int, default=0,
                    help="processes that encode the images (0 = one per core)")
  prep.add_argument("--repack", action="store_true",
                    help="make the parts again even where intact ones are there")
  for name, summary in (("stage1", "call 1: wheels, part 0, the benchmark variants"),
                        ("stage2", "call 2: part 1, the pixel check, the 20-epoch run")):
    stage = commands.add_parser(name, help=summary,
                                epilog="Arguments after -- go to the rwl_jax command (--config.X=Y).")
    stage.add_argument("--dry-run", action="store_true", help="the same path, tiny, on the CPU")
    stage.add_argument("--parts", type=pathlib.Path, default=PARTS_DIR)
    stage.add_argument("--wheels", type=pathlib.Path, default=WHEEL_DIR)
    stage.add_argument("--work", type=pathlib.Path, default=WORK_DIR,
                       help="images, wheels and runs on the lent machine, outside the repository")
    stage.add_argument("--out", type=pathlib.Path, default=None, help="default: $OUT")
    stage.add_argument("--budget-s", type=float, default=BUDGET_S)
    if name == "stage1":
      stage.add_argument("--variants", default=None,
                         help="';'-separated NAME:key=value,... ('' = none; default: VARIANTS)")
      stage.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True)
    stage.add_argument("overrides", nargs="*", help="extra flags for the rwl_jax command")
  args = parser.parse_args(argv)
  if args.command != "prepare":
    args.out = args.out or (pathlib.Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if args.out is None:
      raise Failure("no output folder: set $OUT or pass --out")
    bad = [o for o in args.overrides if not o.startswith("--config.")]
    if bad:
      raise Failure(f"extra arguments must be --config.FIELD=VALUE overrides, got {bad}")
    args.work = args.work.expanduser().resolve()
  return args


def main(argv: Sequence[str] | None = None) -> int:
  stage = None
  try:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.command == "prepare":
      prepare(args)
      return 0
    stage = Stage(args.command, args.out, args.budget_s)
    stage.say(f"{'dry run' if args.dry_run else 'GPU run'}; work {args.work}, out {args.out}")
    (stage1 if args.command == "stage1" else stage2)(args, stage)
    return 0
  except Failure as failure:
    message, status = str(failure), failure.status
  except Exception as error:  # pylint: disable=broad-except  (a bug: its traceback goes to the log)
    if stage:
      stage.write(traceback.format_exc())
    lines = str(error).strip().splitlines()
    message = f"{type(error).__name__}: {lines[0] if lines else ''} (traceback in the log)"
    status = 1
  finally:
    if stage:
      stage.close()
  if stage:
    with stage.log_path.open("a") as log:
      log.write(f"error: {message}\n")
  print(f"error: {message}", file=sys.stderr)
  return status


if __name__ == "__main__":
  sys.exit(main())
