"""The chaos suite in its long mode: every fault injected several times into the running system,
then the README's reliability table.

    python -m bench.chaos                       # long mode, every scenario (about 15 minutes)
    python -m bench.chaos --short               # the mode CI runs (``pytest tests/chaos``)
    python -m bench.chaos redis-paused          # some scenarios only (the table is printed, not saved)

Starts its own Postgres (and, per scenario, Redis, the listener, a Celery worker and readers); the
logs and records of each scenario are kept under ``--logs``. The same scenarios, with assertions,
are the tests in ``tests/chaos`` (``SHARED_CACHE_CHAOS=long`` runs those in the long mode).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

from devtools.embedded import EmbeddedPostgres, bin_dir, server_binary
from tests.chaos.logs import new_run_dir
from tests.chaos.mode import LONG, SHORT
from tests.chaos.report import TABLE_HEADER, ScenarioReport
from tests.chaos.scenarios import SCENARIOS, run_scenario


def versions() -> str:
    redis = subprocess.run([server_binary(), "--version"], capture_output=True, text=True).stdout.split()[2]
    postgres = subprocess.run([f"{bin_dir()}/postgres", "--version"], capture_output=True, text=True).stdout
    return f"Python {platform.python_version()}, Redis {redis.removeprefix('v=')}, {postgres.strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenarios", nargs="*", help=f"default: all of them ({', '.join(SCENARIOS)})")
    parser.add_argument("--short", action="store_true", help="the short mode (what CI runs)")
    parser.add_argument("--out", default="bench/chaos_results.md", help="where to write the table")
    parser.add_argument("--logs", default="", help="directory for each scenario's logs (default: tests.chaos.logs)")
    args = parser.parse_args()
    unknown = [key for key in args.scenarios if key not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    mode = SHORT if args.short else LONG
    keys = args.scenarios or list(SCENARIOS)
    logs = Path(args.logs) if args.logs else new_run_dir()
    reports: list[ScenarioReport] = []
    began = time.time()
    pg = EmbeddedPostgres().start()
    try:
        for key in keys:
            print(f"-- {key} ({mode.name} mode)", file=sys.stderr, flush=True)
            report = run_scenario(key, pg, mode, logs / key)
            reports.append(report)
            print(report.figures(), file=sys.stderr, flush=True)
            for failure in report.failures:
                print(f"   FAIL: {failure.splitlines()[0][:300]}", file=sys.stderr, flush=True)
    finally:
        pg.cleanup()
    lines = [
        f"{versions()}; {mode.name} mode: {mode.readers} readers, {mode.rows} rows over {mode.tenants} tenants,"
        f" {mode.repeats} injection(s) per fault; {time.time() - began:.0f} s in all.",
        "",
        TABLE_HEADER,
        *[report.table_row() for report in reports],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    print(f"logs: {logs}", file=sys.stderr)
    if not args.scenarios:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
