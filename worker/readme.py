"""``python -m worker.readme``: regenerate the settings tables in README.md from the models."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from shared_cache import CacheSettings
from shared_cache._settings import settings_table
from tasks.settings import WorkerSettings

TABLES: dict[str, type[BaseSettings]] = {"settings-table": CacheSettings, "worker-settings-table": WorkerSettings}


def render(readme: str) -> str:
    for marker, model in TABLES.items():
        start, end = f"<!-- {marker} -->\n", f"\n<!-- /{marker} -->"
        head, _, rest = readme.partition(start)
        _, _, tail = rest.partition(end)
        readme = head + start + settings_table(model) + end + tail
    return readme


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
