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
# Preemption: SIGTERM makes the trainer checkpoint at the next step and exit 0; rerunning the same
# command resumes from the workdir.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,16p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
if [[ -n "${CPU_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi
exec "${PYTHON:-python}" -m nag_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
