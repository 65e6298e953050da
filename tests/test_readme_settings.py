"""The README's configuration table is the Settings dataclass, variable for variable."""

from __future__ import annotations

from devkit.testing import ROOT
from metering.settings import documented_settings
from metering.tools.settings_doc import readme_table, settings_table


def test_readme_lists_every_setting_with_its_default() -> None:
    readme = readme_table((ROOT / "README.md").read_text())
    assert readme == settings_table(), (
        "README.md's settings table is out of date: run "
        "`.venv/bin/python -m metering.tools.settings_doc --write`"
    )
    for name, _ in documented_settings():
        assert f"| `{name}` |" in readme


def test_table_shows_defaults_as_the_environment_spells_them() -> None:
    table = settings_table()
    assert "| `METERING_REDIS_CLUSTER` | `0` | bool |" in table
    assert "| `METERING_PORT` | `8080` | int |" in table
    assert "| `METERING_REDIS_URL` | `redis://127.0.0.1:6379/0` | str |" in table
