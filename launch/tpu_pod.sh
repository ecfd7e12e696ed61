#!/usr/bin/env bash
# Run the same nag_jax command on every worker of a Cloud TPU VM pod slice.
#
# Usage:
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
#   launch/tpu_pod.sh my-v4-64 us-central2-b configs/sit_xl.py gs://bucket/runs/sit_xl \
#       --config.data.data_dir=gs://bucket/imagenet256_latents
#
# Env:
#   PROJECT        gcloud project (default: gcloud's configured project)
#   REPO_DIR       checkout of nag_jax on every worker (default: ~/nag_jax)
#   SETUP=1        first `pip install -e ".[tpu,data]"` on every worker: jax[tpu] (libtpu) and
#                  TensorFlow for tfds / TensorBoard. Never `pip install -r requirements.txt` on a
#                  TPU VM: it is the pinned CPU set and puts the CPU jaxlib back.
#   PYTHON         interpreter on the workers (default: python3)
# Every worker runs the same command; jax.distributed.initialize() discovers the pod on its own
# (nag_jax.parallel.maybe_initialize_distributed). The workdir must be shared storage (GCS path
# or a shared filesystem): Orbax writes one checkpoint from all hosts, and config.json lives there.
# Preemption / maintenance: the TPU runtime sends SIGTERM; all hosts agree on the step, write a
# checkpoint and exit 0. Re-run the same command to resume.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,20p' "$0"; exit 2
fi
TPU=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_DIR=${REPO_DIR:-'~/nag_jax'}
PY=${PYTHON:-python3}
ARGS=""
for a in "$@"; do ARGS+=" $(printf '%q' "$a")"; done
CMD="cd ${REPO_DIR} && "
if [[ "${SETUP:-0}" == "1" ]]; then CMD+="${PY} -m pip install -q -e '.[tpu,data]' && "; fi
CMD+="${PY} -m nag_jax.main --config=$(printf '%q' "$CONFIG") --workdir=$(printf '%q' "$WORKDIR")${ARGS}"
echo "[tpu_pod] on all workers of ${TPU}: ${CMD}"
exec gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
  --worker=all --command="$CMD"
