#!/usr/bin/env bash
# The whole suite, once per Keras backend, each in its own process (a backend is chosen per
# process). Extra arguments go to pytest, e.g. `tests/run_all.sh -k spec`.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export KERAS_HOME=${KERAS_HOME:-$(mktemp -d -t kzoo-keras-home-XXXX)}
export TF_CPP_MIN_LOG_LEVEL=2
status=0
backends="jax tensorflow"
if "$PY" -c "import torch" 2>/dev/null; then backends="$backends torch"; fi
for backend in $backends; do
  echo "=== KERAS_BACKEND=$backend ==="
  KERAS_BACKEND=$backend "$PY" -m pytest -n 2 --dist loadgroup -q -p no:cacheprovider "$@" || status=1
done
exit $status
