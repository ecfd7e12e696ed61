#!/usr/bin/env bash
# Run nag_jax on this machine (one process; all local GPUs/TPU cores/CPU as one mesh).
#
# Usage:
#   launch/local.sh CONFIG WORKDIR [--config.key=value ...]
#   launch/local.sh configs/demo.py runs/demo
#   launch/local.sh configs/sit_xl_nag_finetune.py runs/sit_xl_nag \
#       --config.model.weights=ckpt/sit_xl2_256 --config.data.data_dir=data/imagenet256_latents
#
# Env:
#   CPU_DEVICES=N   fake N CPU devices (tries sharding code paths without accelerators)
#   PYTHON          interpreter (default: python)
#   SETUP=1         first install nag_jax for this machine's accelerator: `pip install -e
#                   ".[cuda12,data]" -c launch/constraints/cuda12.txt` when nvidia-smi sees a
#                   GPU, ".[tpu,data]" with tpu.txt on a TPU VM (/dev/accel* or /dev/vfio), else
#                   the pinned CPU set (requirements.txt).
#                   ACCEL=cuda12|tpu|cpu overrides the detection.
# Preemption: SIGTERM makes the trainer checkpoint at the next step and exit 0; rerunning the same
# command resumes from the workdir.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,19p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${SETUP:-0}" == "1" ]]; then
  ACCEL=${ACCEL:-}
  if [[ -z "$ACCEL" ]]; then
    if nvidia-smi -L >/dev/null 2>&1; then ACCEL=cuda12
    elif compgen -G "/dev/accel*" >/dev/null || compgen -G "/dev/vfio/[0-9]*" >/dev/null; then ACCEL=tpu
    else ACCEL=cpu; fi
  fi
  echo "[local] installing nag_jax for ${ACCEL}"
  if [[ "$ACCEL" == "cpu" ]]; then
    "$PY" -m pip install -q -r requirements.txt -e .
  else  # the accelerator jax; requirements.txt (CPU jaxlib) is never installed over it
    "$PY" -m pip install -q -c "launch/constraints/${ACCEL}.txt" -e ".[${ACCEL},data]"
  fi
fi
if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi
exec "$PY" -m nag_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
