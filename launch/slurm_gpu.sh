#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one JAX process per GPU (default) or per node.
#
# Usage (submit):
#   sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 launch/slurm_gpu.sh \
#       configs/sit_xl.py runs/sit_xl --config.data.data_dir=/data/imagenet256_latents
#   # one process per node driving all its GPUs:
#   PER_NODE=1 sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh ...
# Or inside an existing allocation: launch/slurm_gpu.sh CONFIG WORKDIR [--config.key=value ...]
#
# What it does: srun starts one task per GPU (or per node); each task exports
#   JAX_COORDINATOR_ADDRESS=<first node>:PORT  JAX_NUM_PROCESSES=<tasks>  JAX_PROCESS_ID=<rank>
#   (+ JAX_LOCAL_DEVICE_IDS=<local rank> when one process per GPU)
# and nag_jax.parallel.maybe_initialize_distributed() calls jax.distributed.initialize with them.
# Env: PORT (default 12345), PYTHON (default python), PER_NODE=1 (one process per node),
#   SETUP=1 (first `pip install -e ".[cuda12,data]"` into PYTHON's environment, once, on the
#   batch host: jax[cuda12] and TensorFlow for tfds / TensorBoard; the environment must be on
#   the shared filesystem). Never `pip install -r requirements.txt` on GPU nodes: it is the pinned
#   CPU set and puts the CPU jaxlib back; a bf16 config that then finds only CPUs stops with one
#   line (nag_jax.main).
# The workdir must be on a filesystem shared by all nodes. SLURM sends SIGTERM before the time
# limit (use e.g. `#SBATCH --signal=TERM@120`): the run checkpoints and exits 0; resubmit to resume.
#SBATCH --job-name=nag_jax
#SBATCH --signal=TERM@120
#SBATCH --output=%x-%j.out
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,22p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
if [[ "${SETUP:-0}" == "1" ]]; then
  (cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}" && "${PYTHON:-python}" -m pip install -q -e ".[cuda12,data]")
fi
HEAD=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
export JAX_COORDINATOR_ADDRESS="${HEAD}:${PORT:-12345}"
export NAG_PER_NODE=${PER_NODE:-0}
export NAG_PY=${PYTHON:-python}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
ARGS=("$@")
# Inner command runs once per task; SLURM_* are per-task there.
srun --kill-on-bad-exit=1 bash -c '
  export JAX_NUM_PROCESSES=${SLURM_NTASKS}
  export JAX_PROCESS_ID=${SLURM_PROCID}
  if [[ "${NAG_PER_NODE}" != "1" ]]; then
    export JAX_LOCAL_DEVICE_IDS=${SLURM_LOCALID}
  fi
  exec "${NAG_PY}" -m nag_jax.main --config="$0" --workdir="$1" "${@:2}"
' "$CONFIG" "$WORKDIR" "${ARGS[@]}"
