"""The README's table of `METERING_*` variables, generated from the Settings
dataclass (`documented_settings()`) so it cannot drift from the code:

    python -m metering.tools.settings_doc            print the table
    python -m metering.tools.settings_doc --write    rewrite it in README.md

A test fails when README.md and this table disagree.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

from metering.settings import Settings, documented_settings

BEGIN = "<!-- generated:settings (python -m metering.tools.settings_doc --write) -->"
END = "<!-- /generated:settings -->"
README = Path(__file__).resolve().parents[2] / "README.md"


def settings_table() -> str:
    """A Markdown table: variable, default (as the environment spells it), type."""
    kinds = {f.name: type(f.default).__name__ for f in dataclasses.fields(Settings)}
    rows = ["| variable | default | type |", "|---|---|---|"]
    for name, default_repr in documented_settings():
        kind = kinds[name.removeprefix("METERING_").lower()]
        rows.append(f"| `{name}` | {_as_env(default_repr)} | {kind} |")
    return "\n".join(rows) + "\n"


def _as_env(default_repr: str) -> str:
    value = ast.literal_eval(default_repr)
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    if value == "":
        return "(empty)"
    return f"`{value}`"


def readme_table(readme_text: str) -> str:
    """The generated table as README.md has it now."""
    start = readme_text.index(BEGIN) + len(BEGIN)
    return readme_text[start : readme_text.index(END, start)].strip("\n") + "\n"


def with_table(readme_text: str) -> str:
    start = readme_text.index(BEGIN) + len(BEGIN)
    end = readme_text.index(END, start)
    return readme_text[:start] + "\n" + settings_table() + readme_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m metering.tools.settings_doc", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args(argv)
    if args.write:
        README.write_text(with_table(README.read_text()))
        print(f"wrote {len(documented_settings())} settings to {README}")
    else:
        sys.stdout.write(settings_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
