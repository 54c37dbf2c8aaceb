"""Every reason the code writes into a condition or an Event is in docs/operations.md's troubleshooting tables."""

from __future__ import annotations

import re

from tests.conftest import REPO

# reason="X" (a keyword or a default), reason = "X" (a class's): how the code names every reason.
REASON = re.compile(r"reason(?:=|: str = | = )\"([A-Z][A-Za-z]+)\"")


def emitted_reasons() -> set[str]:
    found: set[str] = set()
    for root in ("operator/slmops_operator", "pipelines/slmops_pipelines"):
        for path in (REPO / root).rglob("*.py"):
            found |= set(REASON.findall(path.read_text()))
    return found


def test_every_reason_the_code_emits_is_explained():
    text = (REPO / "docs" / "operations.md").read_text()
    section = text[text.index("## Troubleshooting by condition reason") :]
    documented = set(re.findall(r"^\| `([A-Za-z]+)`", section, re.M))
    documented |= set(re.findall(r"`([A-Z][A-Za-z]+)`", section))
    reasons = emitted_reasons()
    assert {"MissingCredentials", "RunLost", "WorkerLost", "NotServed"} <= reasons  # the pattern finds them
    missing = sorted(reasons - documented)
    assert not missing, f"reasons the code emits that docs/operations.md does not explain: {missing}"
