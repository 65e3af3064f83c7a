"""The Procfile and docker-compose.yml name commands and modules that exist."""

from __future__ import annotations

import importlib
import pathlib
import re
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _check_command(argv: list[str]) -> None:
    if argv[:2] == ["python", "-m"]:
        importlib.import_module(argv[2])
    elif argv[0] == "celery":
        assert argv[1] == "-A"
        module = importlib.import_module(argv[2])
        assert hasattr(module, "app"), f"{argv[2]} has no Celery app"
        for i, arg in enumerate(argv):
            if arg == "-Q":
                assert set(argv[i + 1].split(",")) <= {"invalidation", "warming"}
        if argv[3] == "beat":  # the schedule it runs: the reclaim sweep
            tasks = {entry["task"] for entry in module.app.conf.beat_schedule.values()}
            assert tasks == {"shared_cache.reclaim_permanent"}, tasks
    elif argv[0] == "sh":
        assert "celery -A worker.app" in argv[-1]
    else:
        pytest.fail(f"unknown command {argv}")


def test_procfile_commands_exist() -> None:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()]
    assert {line.split(":", 1)[0] for line in lines} >= {"listener", "invalidation", "warming", "beat"}
    for line in lines:
        _check_command(shlex.split(line.split(":", 1)[1]))


def test_compose_commands_exist() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    commands = re.findall(r"command: (\[.*\])", text)
    assert len(commands) >= 5
    for raw in commands:
        argv = [part.strip().strip('"') for part in raw.strip("[]").split('",')]
        if argv[0] in ("redis-server", "postgres"):
            continue
        _check_command(argv)
    for service in ("redis:", "postgres:", "listener:", "invalidation-worker:", "warming-worker:", "beat:", "flower:"):
        assert f"\n  {service}" in text
    assert "wal_level=logical" in text and "healthcheck" in text


def test_compose_postgres_allows_wal2json_where_the_server_knows_the_setting() -> None:
    """The compose service's start line, run here with this machine's server binaries (the image's
    entrypoint replaced by ``echo``): the plugin setting is added exactly when the server has it."""
    from devtools.embedded import bin_dir, server_settings

    text = (ROOT / "docker-compose.yml").read_text()
    script = re.search(r"\n  postgres:.*?command:\n      - >-\n((?:        [^\n]*\n)+)", text, re.S)
    assert script is not None
    line = " ".join(part.strip() for part in script.group(1).splitlines()).replace("$$", "$")
    line = line.replace("exec docker-entrypoint.sh", "exec echo")
    env = {"PATH": f"{bin_dir()}:/usr/bin:/bin"}
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out[:5] == ["postgres", "-c", "wal_level=logical", "-c", "max_replication_slots=10"]
    if "output_plugin_libraries" in server_settings(bin_dir()):
        assert out[5:] == ["-c", "output_plugin_libraries=pgoutput,test_decoding,wal2json"]
    else:
        assert out[5:] == []


def test_env_example_names_real_settings() -> None:
    from shared_cache import CacheSettings
    from tasks.settings import TaskSettings
    from worker.settings import ListenerSettings

    known = {f"SHARED_CACHE_{n.upper()}" for n in CacheSettings.model_fields} | {
        f"SHARED_CACHE_WORKER_{n.upper()}" for n in (*TaskSettings.model_fields, *ListenerSettings.model_fields)
    }
    for line in (ROOT / ".env.example").read_text().splitlines():
        name = line.lstrip("# ").split("=", 1)[0]
        if name.startswith("SHARED_CACHE_"):
            assert name in known, name
