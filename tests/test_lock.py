"""requirements/*.lock (scripts/lock.sh) pin every dependency of pyproject.toml, extra by extra, at
one version across the locks: scripts/install.sh installs them with --no-deps, so a dependency
added to pyproject.toml without refreshing the locks would be missing from every install."""
from __future__ import annotations

import os
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]
LOCKED_EXTRAS = sorted(set(PYPROJECT["optional-dependencies"]) - {"vllm"})  # vllm: GPU machines only
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def pins(name: str) -> dict[str, str]:
    """{package: version} of requirements/NAME.lock."""
    out = {}
    for line in open(os.path.join(REPO, "requirements", f"{name}.lock")):
        line = line.split("#", 1)[0].strip()
        if line:
            package, version = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)", line).groups()
            out[canonicalize_name(package)] = version
    return out


def requirements(extra: str | None) -> list[Requirement]:
    """What `pip install -e '.[extra]'` asks for directly, self-references (vico[model,...]) expanded."""
    out = [Requirement(r) for r in PYPROJECT["dependencies"]]
    todo, seen = [extra] if extra else [], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in PYPROJECT["optional-dependencies"][name]:
            req = Requirement(text)
            if canonicalize_name(req.name) == "vico":
                todo += sorted(req.extras)
            else:
                out.append(req)
    return out


@pytest.mark.parametrize("extra", [None, *LOCKED_EXTRAS])
def test_every_dependency_of_an_extra_is_pinned_in_its_lock_at_a_version_it_allows(extra):
    locked = pins(extra or "base")
    for req in requirements(extra):
        if req.marker is not None and not req.marker.evaluate(ENVIRONMENT):
            continue
        name = canonicalize_name(req.name)
        assert name in locked, f"{req} is not in requirements/{extra or 'base'}.lock: run bash scripts/lock.sh"
        assert req.specifier.contains(locked[name], prereleases=True), \
            f"requirements/{extra or 'base'}.lock pins {name}=={locked[name]}, pyproject.toml asks {req}"


def test_the_locks_agree_with_the_test_lock_and_name_their_refresh_command():
    tested = pins("test")
    for name in ["base", *LOCKED_EXTRAS]:
        text = open(os.path.join(REPO, "requirements", f"{name}.lock")).read()
        assert "bash scripts/lock.sh" in text.splitlines()[2]  # uv's header: the command that wrote it
        for package, version in pins(name).items():  # one version of a package across the locks
            assert tested.get(package) == version, (name, package, version, tested.get(package))
    assert tested["torch"] == "2.13.0+cpu"  # the CPU build: no CUDA libraries in any lock
    assert not [p for p in tested if p.startswith("nvidia-")]


def test_install_sh_has_a_lock_for_every_extra_it_accepts():
    script = open(os.path.join(REPO, "scripts", "install.sh")).read()
    assert "requirements/base.lock" in script and 'requirements/$extra.lock' in script
    lock_sh = open(os.path.join(REPO, "scripts", "lock.sh")).read()
    for extra in LOCKED_EXTRAS:
        assert os.path.exists(os.path.join(REPO, "requirements", f"{extra}.lock"))
        assert extra in lock_sh
