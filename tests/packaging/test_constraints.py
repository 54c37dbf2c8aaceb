"""Every package the set-up installs is pinned (constraints.txt and constraints-lock.txt): a fresh
install is the one the tests ran on."""

from __future__ import annotations

import importlib.metadata
import re

from tests.conftest import REPO

NOT_PINNED = {"pip", "setuptools", "wheel", "slmops"}  # the installer itself, and this project
FILES = ("constraints.txt", "constraints-lock.txt")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    found = {}
    for file in FILES:
        for line in (REPO / file).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, version = line.partition("==")
                assert version, f"{file}: {line!r} is not pinned with =="
                found[normalized(name)] = version.strip()
    return found


def test_every_installed_package_is_pinned():
    pinned = pins()
    installed = {normalized(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    unpinned = sorted(name for name in installed if name not in pinned and name not in NOT_PINNED)
    assert unpinned == [], f"installed but in neither {' nor '.join(FILES)}: {unpinned}"


def test_no_package_is_pinned_twice():
    names = [
        normalized(line.split("==", 1)[0])
        for file in FILES
        for line in (REPO / file).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(names) == len(set(names))
