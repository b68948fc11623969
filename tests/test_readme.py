"""The README against the declarations it documents: every flow parameter has a row in its options table,
with the declared default, and the README stays short enough to read."""

import re
from pathlib import Path

from dropout_lab.config import DEFAULT, PARAMETERS, SETTINGS, flag, value_text

README = Path(__file__).resolve().parent.parent / "README.md"
MOST_LINES = 300


def options_rows() -> dict[str, tuple[str, str]]:
    """flag → (its row's default cell, meaning cell), from the README's options table."""
    section = README.read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            for option in re.findall(r"--[a-z-]+", cells[0]):
                rows[option] = (cells[1], cells[2])
    return rows


def shown_default(default) -> str:
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return ", ".join(map(value_text, default)) or "none"
    return value_text(default) if isinstance(default, float) else str(default)


def test_every_flow_parameter_has_a_row_with_its_declared_default():
    rows = options_rows()
    for name, param in PARAMETERS.parameters.items():
        option = flag(name)
        assert option in rows, f"README.md's options table has no row for {option}"
        if param.default is not None:
            assert shown_default(param.default) in rows[option][0], (option, rows[option][0])
    for setting in SETTINGS:  # each compared setting is compared with the baseline; a word setting's words shown
        default, meaning = rows[flag(setting.field)]
        assert "compare" in meaning, setting.field
        assert all(word in meaning for word in setting.choices if word != setting.off), (setting.field, meaning)
        if setting.field in dict(DEFAULT.settings):
            assert f"{value_text(dict(DEFAULT.settings)[setting.field])} when no setting is named" in default


def test_the_outputs_section_names_every_setting_as_folder_names_show_it():
    outputs = README.read_text().split("## Outputs", 1)[1].split("\n## ", 1)[0]
    for setting in SETTINGS:
        example = setting.choices[-1] if setting.choices else 0.1
        assert f"`{setting.tag([example]).split(value_text(example))[0]}" in outputs, setting.field


def test_the_readme_stays_readable():
    assert len(README.read_text().splitlines()) <= MOST_LINES
