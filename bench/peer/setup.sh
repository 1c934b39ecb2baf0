#!/usr/bin/env bash
# Create (or bring up to date) the FuxiCTR peer venv at bench/peer/.venv.
# Idempotent: a venv whose installed requirements match requirements.txt is left alone.
# Usage: bash bench/peer/setup.sh            (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
   && "$venv/bin/python" -c "import fuxictr, torch, polars, ray" 2>/dev/null; then
    echo "peer venv up to date: $venv"
else
    start=$SECONDS
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
    "$venv/bin/python" -m pip check
    echo "$want" > "$stamp"
    echo "peer venv installed in $((SECONDS - start)) s: $venv"
fi
"$venv/bin/python" -c "import fuxictr.version as v, torch; print('fuxictr', v.__version__, '| torch', torch.__version__)"
echo "run: $venv/bin/python $here/fuxictr_run.py --help"
