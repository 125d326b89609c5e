#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it, install, run the same command on every worker,
# copy the results back, delete the slice.
#
#   ZONE=us-central2-b TYPE=v4-32 NAME=rwl-v4 ./launch/tpu_vm.sh configs/cifar10_rwl.py [--config.X=Y ...]
#
# Every worker runs `python -m rwl_jax.main --distributed`; JAX finds the other workers from the
# TPU metadata, each process reads its own share of each global batch, only process 0 writes
# metrics, and Orbax writes checkpoints collectively to WORKDIR (use a gs:// bucket for a pod).
set -euo pipefail
CONFIG=${1:?usage: tpu_vm.sh CONFIG [overrides...]}
shift
ZONE=${ZONE:?set ZONE}
TYPE=${TYPE:-v4-8}
NAME=${NAME:-rwl-jax-$(date +%s)}
VERSION=${VERSION:-tpu-ubuntu2204-base}
WORKDIR=${WORKDIR:?set WORKDIR, e.g. gs://BUCKET/runs/rwl}
REPO_URL=${REPO_URL:?set REPO_URL, the git URL of this repository}
KEEP=${KEEP:-0}  # KEEP=1 leaves the slice running

gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$TYPE" --version="$VERSION"
cleanup() { [ "$KEEP" = 1 ] || gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet; }
trap cleanup EXIT

on_all() { gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$1"; }
on_all "git clone -q $REPO_URL rwl_jax && cd rwl_jax && pip install -q -e '.[gcs]' 'jax[tpu]'"
on_all "cd rwl_jax && python3 -m rwl_jax.main --distributed --config=$CONFIG --workdir=$WORKDIR $*"
mkdir -p "results/$NAME"
gcloud storage cp "$WORKDIR/results.json" "$WORKDIR/config.json" "results/$NAME/" 2>/dev/null \
  || gcloud compute tpus tpu-vm scp --zone="$ZONE" --worker=0 "$NAME:$WORKDIR/results.json" "results/$NAME/"
echo "results in results/$NAME"
