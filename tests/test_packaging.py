"""What a service installs, and what the worker application needs, as the project files say."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _wheel_files(tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The files of a wheel built from the project's sources alone (without what an editable install
    or an earlier build left in the tree: the compiled module, build/)."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("*.so", "*.c", "build", ".*", "*.egg-info", "app"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        env=env,
    )
    (wheel,) = tmp_path.glob("shared_cache-*.whl")
    return zipfile.ZipFile(wheel).namelist()


def test_the_library_wheel_holds_the_library_alone(tmp_path: Path) -> None:
    names = _wheel_files(tmp_path, {k: v for k, v in os.environ.items() if k != "SHARED_CACHE_NO_EXTENSIONS"})
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"shared_cache"}, top
    assert "shared_cache/py.typed" in names
    assert {"shared_cache/lua/write.lua", "shared_cache/lua/invalidate.lua"} <= set(names)
    entry_points = [n for n in names if n.endswith("entry_points.txt")]
    assert entry_points == [], "the library installs no commands: they belong to the worker application"
    compiled = [n for n in names if n.startswith("shared_cache/_hot_path.") and n.endswith(".so")]
    assert len(compiled) == 1, names  # the memory-tier hit in C
    assert {"shared_cache/_hot_path.pyx", "shared_cache/_hot_path.pyi"} <= set(names)  # its source and types


def test_without_a_c_compiler_the_library_builds_as_pure_python(tmp_path: Path) -> None:
    names = _wheel_files(tmp_path, {**os.environ, "CC": "false", "LDSHARED": "false"})  # every compile fails
    assert not [n for n in names if n.endswith(".so")], names
    assert {"shared_cache/_cache_aside.py", "shared_cache/_implementation.py"} <= set(names)


def test_the_worker_application_declares_what_the_library_needs() -> None:
    library = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    app = tomllib.loads((ROOT / "app" / "pyproject.toml").read_text())["project"]
    needed = {Requirement(r).name: Requirement(r) for r in library["dependencies"]}
    declared = {Requirement(r).name: Requirement(r) for r in app["dependencies"]}
    assert set(needed) <= set(declared), set(needed) - set(declared)
    for name, requirement in needed.items():
        # The application may ask for a newer floor than the library (its own code can need it),
        # never an older one, and never fewer extras.
        assert requirement.extras <= declared[name].extras, name
        assert _floor(declared[name]) >= _floor(requirement), (name, str(declared[name]))
    assert set(app["scripts"]) == {"shared-cache", "shared-cache-worker"}


def _floor(requirement: Requirement) -> Version:
    floors = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return max(floors, default=Version("0"))
