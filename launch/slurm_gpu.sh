#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one JAX process per GPU (default) or per node.
#
# Submit (2 nodes x 8 GPUs, one task per GPU; add your site's --partition / --account):
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=12 --time=24:00:00 \
#       launch/slurm_gpu.sh configs/sit_xl_nag_finetune.py /shared/runs/sit_xl_nag \
#       --config.model.weights=/shared/ckpt/sit_xl2_256 \
#       --config.data.data_dir=/shared/data/in256_latents
#   # one process per node driving all its GPUs:
#   PER_NODE=1 sbatch --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --cpus-per-task=96 ...
# Inside an existing allocation (salloc): launch/slurm_gpu.sh CONFIG WORKDIR [--config.KEY=VALUE ...]
#
# What it does: srun starts one task per GPU (or per node); each task exports
#   JAX_COORDINATOR_ADDRESS=<first node>:PORT  JAX_NUM_PROCESSES=<tasks>  JAX_PROCESS_ID=<rank>
#   (+ JAX_LOCAL_DEVICE_IDS=<local rank> when one process per GPU)
# and nag_jax.parallel.maybe_initialize_distributed() passes them to jax.distributed.initialize.
# Env: PORT (default 20000 + job id mod 20000: two jobs sharing a head node do not collide),
#   PYTHON (default python; Python >= 3.11), PER_NODE=1 (one process per node),
#   SETUP=1 (first `pip install -c launch/constraints/cuda12.txt -e ".[cuda12,data]"` into PYTHON's
#   environment, once, on the batch host: jax[cuda12] and TensorFlow for tfds / TensorBoard; the
#   environment must be on the shared filesystem), DRY_RUN=1 (print the srun command, run nothing).
#   Never `pip install -r requirements.txt` on GPU nodes: it is the pinned CPU set and puts the CPU
#   jaxlib back; a bf16 config that then finds only CPUs stops with one line (nag_jax.main).
# The workdir must be on a filesystem shared by all nodes. SLURM sends SIGTERM before the time
# limit (--signal=TERM@120 below): the run checkpoints and exits 0; resubmit to resume.
# Works with bash 3.2+ under `set -u` (no arrays).
#SBATCH --job-name=nag_jax
#SBATCH --signal=TERM@120
#SBATCH --output=%x-%j.out
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,26p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
PY=${PYTHON:-python}
ROOT=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
JOB_ID=${SLURM_JOB_ID:?launch/slurm_gpu.sh runs inside a SLURM job: submit it with sbatch (see the header)}
NODELIST=${SLURM_JOB_NODELIST:?SLURM_JOB_NODELIST is not set: submit with sbatch or run inside salloc}

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: $PY is $("$PY" -V 2>&1); nag_jax needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 2
}
if [[ "${SETUP:-0}" == "1" ]]; then
  (cd "$ROOT" && "$PY" -m pip install -q -c launch/constraints/cuda12.txt -e ".[cuda12,data]")
fi
HEAD=$(scontrol show hostnames "$NODELIST" | head -n 1)
export JAX_COORDINATOR_ADDRESS="${HEAD}:${PORT:-$((20000 + JOB_ID % 20000))}"
export NAG_PER_NODE=${PER_NODE:-0}
export NAG_PY=$PY
cd "$ROOT"
# The inner command runs once per task; SLURM_* are per-task there. "$@" (not an array) is safe
# under set -u when empty, on every bash.
# shellcheck disable=SC2016  # expanded by each task's bash, not here
INNER='
  export JAX_NUM_PROCESSES=${SLURM_NTASKS}
  export JAX_PROCESS_ID=${SLURM_PROCID}
  if [[ "${NAG_PER_NODE}" != "1" ]]; then
    export JAX_LOCAL_DEVICE_IDS=${SLURM_LOCALID}
  fi
  exec "${NAG_PY}" -m nag_jax.main --config="$0" --workdir="$1" "${@:2}"
'
if [[ "${DRY_RUN:-0}" == "1" ]]; then
  echo "JAX_COORDINATOR_ADDRESS=${JAX_COORDINATOR_ADDRESS}"
  printf '+ srun --kill-on-bad-exit=1 bash -c <per-task command> %q %q' "$CONFIG" "$WORKDIR"
  for a in "$@"; do printf ' %q' "$a"; done
  printf '\n'
  exit 0
fi
exec srun --kill-on-bad-exit=1 bash -c "$INNER" "$CONFIG" "$WORKDIR" "$@"
