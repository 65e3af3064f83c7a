"""``python -m devtools.readme``: regenerate the settings tables in README.md from the models."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from shared_cache import CacheSettings
from tasks.settings import TaskSettings
from worker.settings import ListenerSettings

TABLES: dict[str, type[BaseSettings]] = {
    "settings-table": CacheSettings,
    "listener-settings-table": ListenerSettings,
    "task-settings-table": TaskSettings,
}


def settings_table(model: type[BaseSettings]) -> str:
    """Markdown table of a settings model (the README's tables are checked against it by a test)."""
    prefix = model.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        rows.append(f"| `{prefix}{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    for marker, model in TABLES.items():
        start, end = f"<!-- {marker} -->\n", f"\n<!-- /{marker} -->"
        head, found, rest = readme.partition(start)
        _, found_end, tail = rest.partition(end)
        if not (found and found_end):
            raise ValueError(f"README has no {start.strip()} ... {end.strip()} block")
        readme = head + start + settings_table(model) + end + tail
    return readme


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
