"""Entry point of one training process: ``python -m slmops_pipelines.steps.train REQUEST.json``.

Launched by torchrun (see :mod:`.launch`), once per process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from slmops_pipelines.steps.train.request import TrainRequest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m slmops_pipelines.steps.train REQUEST.json", file=sys.stderr)
        return 2
    from slmops_pipelines.errors import JobError
    from slmops_pipelines.quiet import quiet_libraries

    quiet_libraries()
    from slmops_pipelines.steps.train.trainer import train

    request = TrainRequest.model_validate_json(Path(argv[0]).read_text())
    try:
        train(request)
    except JobError as exc:
        # Hand the parent the error as data, so that it re-raises it with its field and reason
        # instead of scraping a traceback out of the log.
        if int(os.environ.get("RANK", "0")) == 0:
            request.error_path.parent.mkdir(parents=True, exist_ok=True)
            request.error_path.write_text(json.dumps(exc.to_dict()))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
