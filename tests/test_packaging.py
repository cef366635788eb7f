"""setup.cfg's ranges and constraints.txt's pins tell one story: every lower bound is the version CI tests.

CI installs with ``-c constraints.txt``, so a lower bound that drifted from its pin would be a claim no run
checks; this keeps the two in step.
"""

from __future__ import annotations

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def declared_requirements() -> list[Requirement]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    texts = setup["options"]["install_requires"].splitlines()
    for extra in setup["options.extras_require"].values():
        texts += extra.splitlines()
    return [Requirement(text) for text in texts if text.strip() and not text.strip().startswith("#")]


def pinned_versions() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version.split(";")[0].strip())
    return pins


def test_every_requirement_has_a_lower_bound_equal_to_its_tested_pin():
    pins = pinned_versions()
    for requirement in declared_requirements():
        lower = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
        assert lower, f"{requirement}: no lower bound"
        assert canonicalize_name(requirement.name) in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert lower[0] == pins[canonicalize_name(requirement.name)], (
            f"{requirement}: lower bound {lower[0]} but constraints.txt tests {pins[canonicalize_name(requirement.name)]}"
        )


def test_pins_satisfy_the_declared_ranges():
    pins = pinned_versions()
    for requirement in declared_requirements():
        assert pins[canonicalize_name(requirement.name)] in requirement.specifier, requirement


def test_no_requirement_is_pinned_exactly():
    """An exact pin in install_requires stops pip from installing tfsky beside any other version of it."""
    for requirement in declared_requirements():
        assert all(spec.operator != "==" for spec in requirement.specifier), requirement
