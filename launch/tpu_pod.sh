#!/usr/bin/env bash
# Run nag_jax on every worker of a Cloud TPU VM pod slice: code, install, detached start, logs.
#
# Usage:
#   launch/tpu_pod.sh setup  TPU ZONE                         code + venv + .[tpu,data] on all workers
#   launch/tpu_pod.sh start  TPU ZONE CONFIG WORKDIR [--config.KEY=VALUE ...]   (runs setup first)
#   launch/tpu_pod.sh status TPU ZONE                         running or not, per worker
#   launch/tpu_pod.sh logs   TPU ZONE [LINES]                 the last LINES (default 20) of each log
#   launch/tpu_pod.sh stop   TPU ZONE                         SIGTERM: checkpoint at the next step, exit
# Example (a v4-32, latents copied from a bucket to every worker's disk):
#   LATENTS=gs://bucket/in256_latents launch/tpu_pod.sh start my-v4-32 us-central2-b \
#       configs/sit_xl_nag_finetune.py gs://bucket/runs/sit_xl_nag \
#       --config.model.weights=gs://bucket/ckpt/sit_xl2_256
#
# Env:
#   CODE=wheel     (default) build a wheel of this checkout here, copy it to every worker, install
#                  it: the workers run exactly the code you have. Configs ship inside the wheel,
#                  so --config=configs/NAME.py works on the workers.
#   CODE=git       clone GIT_URL (default: this checkout's origin) at GIT_REF (default: this
#                  checkout's HEAD commit; must be pushed) on every worker, install it editable.
#   PYTHON         interpreter on the workers, Python >= 3.11 (default: python3.11 if present,
#                  else python3). INSTALL_PYTHON=1 first runs
#                  `sudo apt-get install -y python3.11 python3.11-venv` (Ubuntu 22.04 images
#                  ship 3.10, which jax/flax/orbax at our pins refuse).
#   REMOTE_DIR     where code, venv, logs live on each worker (default: nag_jax_pod, in $HOME)
#   LATENTS=gs://  a latents folder to copy to each worker's LOCAL_LATENTS (default:
#                  /tmp/nag_jax_latents/<name>) with `gcloud storage cp -r`; start then adds
#                  --config.data.data_dir=LOCAL_LATENTS (array_record reads local files only).
#   JOB            job name: the log is REMOTE_DIR/logs/JOB.<worker hostname>.log (default nag_jax)
#   SETUP=0        start without running setup first
#   PROJECT        gcloud project (default: gcloud's configured project)
#   DRY_RUN=1      print the commands (local and gcloud) instead of running them
# The workdir must be shared storage (gs:// or a shared filesystem). The job runs under setsid +
# nohup, so a dropped ssh does not stop it. Every worker runs the same command; JAX finds the pod
# through the TPU metadata server (jax.distributed.initialize() without arguments,
# nag_jax.parallel). Preemption / maintenance: the runtime sends SIGTERM (as `stop` does): all hosts
# agree on a step, write one checkpoint and exit 0; `start` with the same arguments resumes.
set -euo pipefail

usage() { sed -n '2,37p' "$0"; exit 2; }
[[ $# -ge 3 ]] || usage
SUB=$1; TPU=$2; ZONE=$3; shift 3
case "$SUB" in setup|start|status|logs|stop) ;; *) usage ;; esac

HERE=$(cd "$(dirname "$0")/.." && pwd)
CODE=${CODE:-wheel}
REMOTE_DIR=${REMOTE_DIR:-nag_jax_pod}  # relative: under the workers' home (scp's convention)
if [[ "$REMOTE_DIR" == /* ]]; then RDIR=$REMOTE_DIR; else RDIR="\$HOME/$REMOTE_DIR"; fi
JOB=${JOB:-nag_jax}
LOGS="${RDIR}/logs"
PIDFILE="${LOGS}/${JOB}.pid"
LOG="${LOGS}/${JOB}.\$(hostname).log"
VENV="${RDIR}/venv"
DRY=${DRY_RUN:-0}

run() {  # a local command, or its echo under DRY_RUN=1
  if [[ "$DRY" == "1" ]]; then printf '+ %s\n' "$*"; else "$@"; fi
}

on_all() {  # one bash command on every worker (concurrently), through gcloud's ssh
  run gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} \
    --worker=all --command="$1"
}

copy_to_all() {  # local file -> a path under REMOTE_DIR on every worker
  run gcloud compute tpus tpu-vm scp "$1" "$TPU:$2" --zone="$ZONE" \
    ${PROJECT:+--project="$PROJECT"} --worker=all
}

compile_check() {
  # Hook: a compile-only check of CONFIG for this pod's topology before anything starts. It
  # needs mode "compile" (nag_jax/jobs/compile.py: the TPU compiler on this machine through
  # jax.experimental.topologies); until that job exists, this step says so and goes on.
  if [[ -f "$HERE/nag_jax/jobs/compile.py" ]]; then
    run python -m nag_jax.main --config="$1" --workdir="${TMPDIR:-/tmp}/nag_jax_compile_check" \
      --config.mode=compile "${@:2}"
  else
    echo "[tpu_pod] compile-only check: not available yet (nag_jax/jobs/compile.py); skipped"
  fi
}

setup() {
  local py_pick install
  # Python >= 3.11 on every worker (one line and stop otherwise), then a venv.
  py_pick="PY=\$(command -v ${PYTHON:-python3.11} || command -v python3); "
  if [[ "${INSTALL_PYTHON:-0}" == "1" ]]; then
    py_pick="sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv && ${py_pick}"
  fi
  py_pick+="\$PY -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo \"[\$(hostname)] error: \$PY is \$(\$PY -V 2>&1); nag_jax needs Python >= 3.11: rerun with INSTALL_PYTHON=1 (apt python3.11) or PYTHON=/path/to/python3.11\"; exit 1; }; "
  py_pick+="mkdir -p ${RDIR} ${LOGS} && { [ -x ${VENV}/bin/python ] || \$PY -m venv ${VENV}; } && ${VENV}/bin/python -m pip install -q --upgrade pip"
  on_all "$py_pick"
  copy_to_all "$HERE/launch/constraints/tpu.txt" "${REMOTE_DIR}/constraints-tpu.txt"
  if [[ "$CODE" == "wheel" ]]; then
    local dist wheel
    dist=$(mktemp -d)
    run python -m pip wheel --no-deps --no-build-isolation -q -w "$dist" "$HERE"
    wheel=nag_jax-0.1.0-py3-none-any.whl  # the name pip gives it (printed as is under DRY_RUN)
    for f in "$dist"/nag_jax-*.whl; do [[ -e "$f" ]] && wheel=${f##*/}; done
    copy_to_all "$dist/$wheel" "${REMOTE_DIR}/$wheel"
    install="${VENV}/bin/python -m pip install -q --force-reinstall --no-deps ${RDIR}/$wheel && ${VENV}/bin/python -m pip install -q -c ${RDIR}/constraints-tpu.txt \"${RDIR}/${wheel}[tpu,data]\""
  elif [[ "$CODE" == "git" ]]; then
    local url ref
    url=${GIT_URL:-$(git -C "$HERE" remote get-url origin)}
    ref=${GIT_REF:-$(git -C "$HERE" rev-parse HEAD)}
    install="{ [ -d ${RDIR}/src/.git ] || git clone -q $(printf '%q' "$url") ${RDIR}/src; } && cd ${RDIR}/src && git fetch -q origin && git checkout -q --detach $(printf '%q' "$ref") && ${VENV}/bin/python -m pip install -q -c ${RDIR}/constraints-tpu.txt -e '.[tpu,data]'"
  else
    echo "error: CODE=$CODE: expected wheel or git" >&2; exit 2
  fi
  on_all "$install && echo \"[\$(hostname)] nag_jax installed: \$(${VENV}/bin/python -c 'import jax, nag_jax; print(nag_jax.__version__, \"jax\", jax.__version__)')\""
}

start() {
  [[ $# -ge 2 ]] || usage
  local config=$1 workdir=$2 args="" a cmd
  shift 2
  for a in "$@"; do args+=" $(printf '%q' "$a")"; done
  compile_check "$config" "$@"
  [[ "${SETUP:-1}" == "0" ]] || setup
  cmd=""
  if [[ -n "${LATENTS:-}" ]]; then
    local name local_dir
    name=${LATENTS%/}; name=${name##*/}
    local_dir=${LOCAL_LATENTS:-/tmp/nag_jax_latents/$name}
    cmd+="mkdir -p $(printf '%q' "$local_dir") && gcloud storage cp -r $(printf '%q' "${LATENTS%/}/*") $(printf '%q' "$local_dir/") && "
    args+=" --config.data.data_dir=$(printf '%q' "$local_dir")"
  fi
  cmd+="mkdir -p ${LOGS} && cd ${RDIR} && "
  cmd+="if [ -f ${PIDFILE} ] && kill -0 \$(cat ${PIDFILE}) 2>/dev/null; then echo \"[\$(hostname)] error: ${JOB} is already running (pid \$(cat ${PIDFILE})); stop it first\"; exit 1; fi; "
  # Not a process-group leader (no job control in ssh's shell), so setsid and nohup exec: $! is
  # the python process, which `stop` signals.
  cmd+="setsid nohup ${VENV}/bin/python -m nag_jax.main"
  cmd+=" --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir")${args}"
  cmd+=" > ${LOG} 2>&1 < /dev/null & echo \$! > ${PIDFILE}; sleep 2; "
  cmd+="echo \"[\$(hostname)] started ${JOB}: pid \$(cat ${PIDFILE}), log ${LOG}\""
  on_all "$cmd"
}

status() {
  on_all "if [ -f ${PIDFILE} ] && kill -0 \$(cat ${PIDFILE}) 2>/dev/null; then echo \"[\$(hostname)] ${JOB} running (pid \$(cat ${PIDFILE})): \$(tail -n 1 ${LOG})\"; else echo \"[\$(hostname)] ${JOB} not running; last line: \$(tail -n 1 ${LOG} 2>/dev/null)\"; fi"
}

logs() {
  local lines=${1:-20}
  on_all "echo \"==> [\$(hostname)] ${LOG}\"; tail -n $(printf '%q' "$lines") ${LOG}"
}

stop() {
  on_all "if [ -f ${PIDFILE} ] && kill -0 \$(cat ${PIDFILE}) 2>/dev/null; then kill -TERM \$(cat ${PIDFILE}); for i in \$(seq 300); do kill -0 \$(cat ${PIDFILE}) 2>/dev/null || break; sleep 1; done; kill -0 \$(cat ${PIDFILE}) 2>/dev/null && echo \"[\$(hostname)] still running after 300 s (kill -9 \$(cat ${PIDFILE}) to force)\" || echo \"[\$(hostname)] stopped: \$(tail -n 1 ${LOG})\"; else echo \"[\$(hostname)] ${JOB} not running\"; fi"
}

"$SUB" "$@"
