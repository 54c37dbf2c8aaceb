"""Entry point of one training process: ``python -m slmops_pipelines.steps.train REQUEST.json``.

Launched by torchrun (see :mod:`.launch`), once per process.
"""

from __future__ import annotations

import sys
from pathlib import Path

from slmops_pipelines.steps.train.request import TrainRequest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m slmops_pipelines.steps.train REQUEST.json", file=sys.stderr)
        return 2
    from slmops_pipelines.steps.train.trainer import train

    request = TrainRequest.model_validate_json(Path(argv[0]).read_text())
    train(request)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
