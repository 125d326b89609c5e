"""A stand-in for Google Cloud Storage that needs no network: gs://BUCKET/KEY lives in ROOT/BUCKET/KEY.

Everything rwl_jax and Orbax do with a gs:// path goes through three doors, and each is pointed at
the local folder, so a run on `gs://bucket/run` exercises the real URL code paths end to end:
  - etils.epath (config.json, metrics.jsonl, TensorBoard events, results, Orbax's directories and
    metadata): its gs:// backend is replaced by epath's own testing mock, translating paths;
  - TensorStore (Orbax's array data): Orbax's GCS kvstore spec becomes a file kvstore under ROOT;
  - Orbax's google-cloud-storage calls (bucket namespace query, deletion of old steps): answered
    locally.
A path that lost its scheme (`gs:/bucket/run`) would not be translated and would land in the
working directory instead, which is what the tests look for.

  python tests/local_bucket.py ROOT -m rwl_jax.main --workdir=gs://bucket/run ...
"""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import sys
import types
from unittest import mock

PREFIX = "gs://"


@contextlib.contextmanager
def local_bucket(root: str):
  """While active, gs://B/K means ROOT/B/K for epath, TensorStore (via Orbax) and Orbax."""
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from etils.epath import testing as epath_testing  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.serialization import serialization, tensorstore_utils  # pylint: disable=g-import-not-at-top
  try:  # orbax-checkpoint >= 0.11.20
    from orbax.checkpoint._src.path import gcs_utils  # pylint: disable=g-import-not-at-top
  except ImportError:
    gcs_utils = None

  def local(path):
    text = os.fspath(path)
    return os.path.join(root, text[len(PREFIX):]) if text.startswith(PREFIX) else text

  def translated(original, path, *args, **kwargs):
    return original(local(path), *args, **kwargs)

  def translated_pair(original, path, destination, *args, **kwargs):
    return original(local(path), local(destination), *args, **kwargs)

  def file_kvstore(path: str):
    return {"driver": "file", "path": local(path)}

  def remove_tree(path, *, missing_ok: bool = False):
    shutil.rmtree(local(path), ignore_errors=missing_ok)

  single = ("open", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "remove", "rmtree",
            "stat", "walk")
  with contextlib.ExitStack() as stack:
    # epath sends gs:// to TensorFlow's gfile whenever TensorFlow is installed; to the mock instead.
    stack.enter_context(mock.patch.object(gpath, "_is_tf_installed", lambda: False))
    stack.enter_context(epath_testing.mock_epath(
        **{name: translated for name in single},
        **{name: translated_pair for name in ("rename", "replace", "copy")}))
    # Where Orbax builds TensorStore's GCS kvstore spec, and asks google-cloud-storage, by version.
    build_kvstore_tspec = tensorstore_utils.build_kvstore_tspec
    for module, name, replacement in (
        # Every Orbax version asks this for TensorStore's spec of a checkpoint directory.
        (tensorstore_utils, "build_kvstore_tspec",
         lambda directory, *a, **k: build_kvstore_tspec(local(directory), *a, **k)),
        (serialization, "_get_kvstore_for_gcs", file_kvstore),  # orbax-checkpoint < 0.12
        (gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False),
        (gcs_utils, "rmtree", remove_tree)):
      if module is not None and hasattr(module, name):
        stack.enter_context(mock.patch.object(module, name, replacement))
    # Orbax imports google.cloud.storage before asking a bucket anything; rwl_jax checks for it.
    added = [name for name in ("google", "google.cloud", "google.cloud.storage")
             if name not in sys.modules]
    for name in added:
      sys.modules[name] = types.ModuleType(name)
    # Not mock.patch.dict(sys.modules): on exit it would also drop every module imported inside.
    stack.callback(lambda: [sys.modules.pop(name, None) for name in added])
    yield


if __name__ == "__main__":
  if len(sys.argv) < 4 or sys.argv[2] != "-m":
    sys.exit("usage: python tests/local_bucket.py ROOT -m MODULE [ARGS...]")
  bucket_root, module = sys.argv[1], sys.argv[3]
  sys.argv = [module, *sys.argv[4:]]
  with local_bucket(bucket_root):
    runpy.run_module(module, run_name="__main__", alter_sys=True)
