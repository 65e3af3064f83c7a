"""What a service installs, and what the worker application needs, as the project files say."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def test_the_library_wheel_holds_the_library_alone(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("shared_cache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"shared_cache"}, top
    assert "shared_cache/py.typed" in names
    assert {"shared_cache/lua/write.lua", "shared_cache/lua/invalidate.lua"} <= set(names)
    entry_points = [n for n in names if n.endswith("entry_points.txt")]
    assert entry_points == [], "the library installs no commands: they belong to the worker application"


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
