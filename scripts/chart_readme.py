#!/usr/bin/env python3
"""Write the values table of charts/slmops/README.md from values.schema.json and values.yaml.

    scripts/chart_readme.py            # rewrite the table between the markers
    scripts/chart_readme.py --check    # exit 1 when the README is stale (a test runs this)

Every leaf of the schema is a row: its key, its type (or allowed values), its default
from values.yaml and its description from the schema, so the schema stays the one place
where a value is described.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[1] / "charts" / "slmops"
BEGIN, END = "<!-- values:begin -->", "<!-- values:end -->"


def _type(node: dict[str, Any]) -> str:
    if "enum" in node:
        return " \\| ".join(
            f"`{value if isinstance(value, str) else json.dumps(value)}`" for value in node["enum"]
        )
    return str(node.get("type", "any"))


def _default(values: Any, key: str) -> str:
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return ""
        node = node[part]
    text = json.dumps(node, separators=(", ", ": "))
    return f"`{text}`".replace("|", "\\|")


def rows(schema: dict[str, Any], values: Any, prefix: str = "") -> list[str]:
    found = []
    for name, node in (schema.get("properties") or {}).items():
        key = f"{prefix}.{name}" if prefix else name
        if node.get("type") == "object" and node.get("properties"):
            found += rows(node, values, key)
            continue
        description = node.get("description", "").replace("|", "\\|")
        found.append(f"| `{key}` | {_type(node)} | {_default(values, key)} | {description} |")
    return found


def render(readme: str) -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    table = "\n".join(["| key | type | default | description |", "|---|---|---|---|", *rows(schema, values)])
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    path = CHART / "README.md"
    current = path.read_text()
    fresh = render(current)
    if "--check" in argv:
        if fresh != current:
            print(f"{path} is stale: run scripts/chart_readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(fresh)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
