"""The layers keep their shape: one face between the operator and the pipelines, kinds in one registry.

* the operator imports ``slmops_pipelines.jobs`` (the face) and ``slmops_pipelines.specs``
  (the API's types), nothing else of the pipelines;
* nothing in ``slmops_pipelines`` imports the operator;
* no code outside the job kinds' own modules asks ``kind == "FineTuneJob"``;
* no module over 500 lines, no function over 80.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

OPERATOR = REPO / "operator" / "slmops_operator"
PIPELINES = REPO / "pipelines" / "slmops_pipelines"
FACE = {"slmops_pipelines", "slmops_pipelines.jobs", "slmops_pipelines.specs"}
KIND_MODULES = PIPELINES / "jobs"


def sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_the_operator_sees_the_pipelines_only_through_the_face():
    reached = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in sources(OPERATOR)
        for line, module in imported_modules(path)
        if module.startswith("slmops_pipelines")
        and module not in FACE
        and not module.startswith("slmops_pipelines.specs.")
    ]
    assert reached == []


def test_the_face_is_the_jobs_module_only():
    """``from slmops_pipelines import X`` in the operator may only take the jobs module."""
    for path in sources(OPERATOR):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "slmops_pipelines":
                assert [a.name for a in node.names] == ["jobs"], f"{path}:{node.lineno}"


def test_the_pipelines_never_import_the_operator():
    upward = [
        f"{path.relative_to(REPO)}:{line}"
        for path in sources(PIPELINES)
        for line, module in imported_modules(path)
        if module.startswith("slmops_operator")
    ]
    assert upward == []


KIND_TEST = re.compile(
    r"""kind\w*\s*[!=]=\s*["'](FineTuneJob|OptimizeJob)["']|isinstance\([^)]*(FineTuneJob|OptimizeJob)\b"""
)


def test_no_kind_is_decided_by_if_outside_the_registry():
    asked = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for root in (OPERATOR, PIPELINES)
        for path in sources(root)
        if KIND_MODULES not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if KIND_TEST.search(line)
    ]
    assert asked == []


@pytest.mark.parametrize("root", [OPERATOR, PIPELINES], ids=["operator", "pipelines"])
def test_modules_and_functions_stay_short(root):
    too_long = []
    for path in sources(root):
        text = path.read_text()
        if len(text.splitlines()) > 500:
            too_long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {length} lines")
    assert too_long == []


REGISTRY_FOLDERS = (PIPELINES / "jobs", PIPELINES / "specs")  # the kinds, and the API types they name


def _kind_words() -> re.Pattern[str]:
    from slmops_pipelines import jobs

    words = {jobs.API_GROUP + "/" + jobs.API_VERSION}
    for kind in jobs.KINDS.values():
        words |= {kind.name, kind.plural, kind.run_prefix}
    return re.compile(r"\b(" + "|".join(sorted(map(re.escape, words))) + r")\b")


def _strings_outside_docstrings(tree: ast.AST) -> list[ast.Constant]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_only_the_registry_spells_a_kind_its_plural_or_the_api_version():
    """Names, plurals, run prefixes, short names and the API version come from the kinds."""
    words = _kind_words()
    spelled = [
        f"{path.relative_to(REPO)}:{node.lineno}: {node.value[:60]!r}"
        for root in (OPERATOR, PIPELINES)
        for path in sources(root)
        if not any(folder in path.parents for folder in REGISTRY_FOLDERS)
        for node in _strings_outside_docstrings(ast.parse(path.read_text()))
        if words.search(node.value)
    ]
    assert spelled == []


def test_no_chart_template_lists_the_plurals():
    """RBAC and webhooks read the plurals from the CRD files the chart ships."""
    from slmops_pipelines import jobs

    templates = REPO / "charts" / "slmops" / "templates"
    listed = [
        f"{path.name}: {kind.plural}"
        for path in sorted(templates.iterdir())
        for kind in jobs.KINDS.values()
        if re.search(rf"\b{kind.plural}\b", path.read_text())
    ]
    assert listed == []
