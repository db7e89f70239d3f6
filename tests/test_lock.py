"""The committed lock is what pyproject.toml's ranges resolve to: every requirement of molora (and of
its extras and the build tools) is pinned there, with a version the range admits, so a range
change without `make lock` (or a hand edit of the lock) fails here rather than on a fresh clone."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    build = [l.split("#")[0].strip() for l in (ROOT / "requirements-build.in").read_text().splitlines()]
    return reqs + [b for b in build if b]


LOCKED = _locked()


def test_lock_pins_every_package_with_hashes():
    text = (ROOT / "requirements.lock").read_text()
    assert len(LOCKED) > 50, "the lock should pin the whole environment"
    blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", text)
    unhashed = [b.split()[0] for b in blocks if "==" in b.split()[0] and "--hash=sha256:" not in b]
    assert not unhashed, f"pins without hashes: {unhashed}"


@pytest.mark.parametrize("spec", _requirements())
def test_each_requirement_is_locked_inside_its_range(spec):
    req = Requirement(spec)
    assert req.marker is None, f"{spec}: a marker needs its own check here (the lock is for Linux x86-64)"
    name = canonicalize_name(req.name)
    assert name in LOCKED, f"{req.name} is required by pyproject.toml but not in requirements.lock: run `make lock`"
    assert req.specifier.contains(LOCKED[name], prereleases=True), \
        f"requirements.lock pins {req.name}=={LOCKED[name]}, outside pyproject's {req.specifier}: run `make lock`"


def test_lock_has_the_tested_torch_set():
    """The set the README names: torchaudio 2.11.1 loads only with torch >= 2.13 (a CUDA build)."""
    assert (LOCKED["torch"], LOCKED["torchvision"], LOCKED["torchaudio"]) == ("2.14.1", "0.29.1", "2.11.1")
