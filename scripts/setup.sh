#!/usr/bin/env bash
# Create .venv and install slmops with everything it needs (idempotent, fast when nothing changed).
#
#   scripts/setup.sh            # train + optimize + dev extras
#
# torch is pinned by constraints.txt to the CPU build this project is tested with; on a GPU
# machine install the torch build you need first, then `pip install -e '.[train]'`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-train,optimize,dev}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.slmops-installed"
want=$(cat pyproject.toml constraints.txt scripts/setup.sh scripts/fetch_helm.sh | sha256sum | cut -d' ' -f1)-$EXTRAS
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setup: installing slmops[$EXTRAS] into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import slmops_operator, slmops_pipelines" # fail loudly if the install did not take
case ",$EXTRAS," in
  *,dev,*) VENV="$VENV" scripts/fetch_helm.sh ;;  # helm lint/template in the test suite
esac
echo "$want" > "$stamp"
echo "setup: done"
