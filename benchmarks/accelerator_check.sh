#!/usr/bin/env bash
# Bootstrap + run of benchmarks/accelerator_check.py on a bare GPU machine that has jax with CUDA.
#
#   bash benchmarks/accelerator_check.sh [accelerator_check.py args]      # from the repo root
#   bash benchmarks/accelerator_check.sh --fetch-wheels                   # here, with a registry
#
# It never touches the machine's jax / jaxlib / CUDA plugin. Python packages the check needs and
# the machine lacks are installed into /tmp/nag_site (PYTHONPATH), from, in this order:
#   1. wheels in $WHEELS (default .whl/, e.g. carried to a machine without internet; fill it with
#      --fetch-wheels on a machine that reaches a registry: pure-python wheels, any platform);
#   2. the package index, pinned as in requirements.txt, --no-deps (so jax / jaxlib are never
#      replaced; each needed dependency is in the list below), skipped quickly without an index.
# torch is not installed here (a CUDA build is ~2 GB): the train_vs_pytorch part runs when the
# machine's image has torch with CUDA and records a skip otherwise.
# Whatever stays missing is listed in the JSON (environment / devices / missing_modules) and the
# parts that need it record their error; the run goes on.
# The run is limited to $LIMIT seconds (default 470) by SIGINT, after which the JSON written so far
# stays; the script's own deadline (450 s for the full sizes) normally ends it first.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=/tmp/nag_site
# Modules the check imports -> their pip names (versions from requirements.txt).
NEEDED="flax:flax optax:optax orbax.checkpoint:orbax-checkpoint ml_collections:ml_collections absl:absl-py yaml:PyYAML"

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p "$WHEELS"
  # ml_collections is the one the 2026-11 H200 image lacks (see .library KINDS.md's package list).
  $PY -m pip download --no-deps --only-binary=:all: -d "$WHEELS" \
    "$(grep -i '^ml_collections' requirements.txt)"
  exit $?
fi

missing=()
for pair in $NEEDED; do
  mod=${pair%%:*}; pkg=${pair#*:}
  $PY -c "import $mod" 2>/dev/null || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "accelerator_check.sh: missing ${missing[*]}; installing into $SITE"
  mkdir -p "$SITE"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  for pkg in "${missing[@]}"; do
    spec=$(grep -i "^${pkg}[=<>]" requirements.txt | head -1)
    spec=${spec:-$pkg}
    whl=$(ls "$WHEELS"/"$(echo "$pkg" | tr - _)"-*.whl 2>/dev/null | head -1)
    if [ -n "$whl" ]; then
      $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$whl" \
        || echo "accelerator_check.sh: could not install $whl"
    else
      timeout 120 $PY -m pip install -q --no-deps --no-compile --target "$SITE" \
        --default-timeout=10 --retries 0 "$spec" \
        || echo "accelerator_check.sh: $spec not installed (no wheel in $WHEELS, no index)"
    fi
  done
fi

export PYTHONUNBUFFERED=1
exec timeout -s INT -k 15 "${LIMIT:-470}" $PY benchmarks/accelerator_check.py "$@"
