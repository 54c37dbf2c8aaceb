#!/usr/bin/env bash
# Create .venv and install slmops with everything it needs (idempotent, fast when nothing changed).
#
#   scripts/setup.sh            # train + optimize + dev extras
#
# With the dev extras, as root where apt-get exists, it also installs Chromium from the OS packages
# for the report's browser test (tests/report), which skips where there is none.
#
# torch is pinned by constraints.txt to the CPU build this project is tested with; on a GPU
# machine install the torch build you need first, then `pip install -e '.[train]'`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-train,optimize,serve,tracking,dev}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.slmops-installed"
want=$(cat pyproject.toml constraints.txt constraints-lock.txt scripts/setup.sh scripts/fetch_helm.sh | sha256sum | cut -d' ' -f1)-$EXTRAS
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

echo "setup: installing slmops[$EXTRAS] into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -c constraints-lock.txt -e ".[$EXTRAS]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import slmops_operator, slmops_pipelines" # fail loudly if the install did not take
# Chromium (tests/report opens report.html in it): from the OS packages when we are root on a
# machine with apt-get; never a reason for the setup to fail.
install_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 0
  echo "setup: installing chromium (apt-get) for the report test"
  local log="$VENV/chromium-install.log"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium fonts-dejavu-core; } >"$log" 2>&1; then
    echo "setup: chromium not installed (see $log); the report's browser test will be skipped"
  fi
}

# MLflow's server (tests/tracking starts it): a venv of its own, since its pins (pyarrow) are not
# ours; the jobs themselves use its client, mlflow-skinny (the tracking extra).
install_mlflow_server() {
  local server="$VENV/mlflow-server"
  [ -x "$server/bin/mlflow" ] && "$server/bin/mlflow" --version 2>/dev/null | grep -q "$MLFLOW_VERSION" && return 0
  echo "setup: installing mlflow $MLFLOW_VERSION (the tracking server the tests start) into $server"
  "$PYTHON" -m venv "$server"
  "$server/bin/python" -m pip install --quiet "mlflow==$MLFLOW_VERSION" 2>&1 | grep -v "^WARNING: Location" || true
  "$server/bin/mlflow" --version >/dev/null  # fail loudly if the install did not take
}
MLFLOW_VERSION=$(sed -n 's/^mlflow-skinny==//p' constraints.txt)  # the server matches its client

case ",$EXTRAS," in
  *,dev,*)
    VENV="$VENV" scripts/fetch_helm.sh  # helm lint/template in the test suite
    install_chromium
    install_mlflow_server
    ;;
esac
echo "$want" > "$stamp"
echo "setup: done"
