"""The README's generated tables (settings, error codes) and the documented config file.

They are rendered from the field metadata in `config.py` and the error classes
in `errors.py`, and a test checks the committed files match, so a new knob or
code cannot go undocumented. `script/gen-docs` rewrites them.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

from . import errors
from .config import ENV_PREFIX, Settings, settings_fields

GROUP_TITLES = {
    "server": "Server and connections",
    "voices": "Voices and catalog",
    "pool": "Voice pool and workers",
    "synthesis": "Synthesis and limits",
    "http": "HTTP door",
}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _cli_flag(name: str) -> str:
    return {
        "data_dirs": "--data-dir",
        "streaming": "--no-streaming",
        "zeroconf": "--zeroconf [NAME]",
        "presets": "--preset NAME=VOICE[:key=value,...]",
        "default_voice_per_language": "--default-voice-per-language LANG=VOICE",
    }.get(name, "--" + name.replace("_", "-"))


#: How the table-valued settings look in the config file (they are tables, not keys).
_TABLE_EXAMPLES = {
    "presets": [
        "[presets.kitchen-slow]",
        'voice = "en_US-joe-medium"',
        "speed = 0.8",
        'volume = "-3dB"',
        "lead_in = 0.2",
    ],
    "default_voice_per_language": ["[default_voice_per_language]", 'de = "de_DE-thorsten-medium"'],
}


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def render_config() -> str:
    lines = [
        "# wyoming-tts configuration.",
        "#",
        "# Precedence: built-in defaults < this file < WYOMING_TTS_* environment",
        "# variables < command-line flags. Every key below shows its default;",
        "# uncomment a line to change it. Tables only group keys; names are unique.",
        "# Start with a different file: wyoming-tts --config PATH",
        "",
    ]
    hints = typing.get_type_hints(Settings)
    group = None
    # Table settings go last: a table header ends the group above it.
    fields = sorted(settings_fields(), key=lambda f: f.name in _TABLE_EXAMPLES)
    for f in fields:
        if f.name in _TABLE_EXAMPLES:
            if group != "tables":
                group = "tables"
                lines += [
                    "",
                    "# Tables of their own, after every group (a header ends the table above).",
                ]
            lines.append("")
            lines += [f"# {chunk}" for chunk in _wrap(f.metadata["doc"], 76)]
            lines.append(f"# env {ENV_PREFIX}{f.name.upper()}, flag {_cli_flag(f.name)}")
            lines += [f"# {line}" for line in _TABLE_EXAMPLES[f.name]]
            continue
        if f.metadata["group"] != group:
            group = f.metadata["group"]
            lines += ["", f"[{group}]  # {GROUP_TITLES[group]}"]
        lines.append("")
        for chunk in _wrap(f.metadata["doc"], 76):
            lines.append(f"# {chunk}")
        lines.append(f"# env {ENV_PREFIX}{f.name.upper()}, flag {_cli_flag(f.name)}")
        if f.default is None:
            example = {"zeroconf": '"wyoming-tts"', "cache_dir": '"/data/cache"'}.get(
                f.name, "0" if "int" in str(hints[f.name]) else "1.0"
            )
            lines.append(f"# {f.name} = {example}   (default: unset)")
        else:
            lines.append(f"# {f.name} = {_toml_value(f.default)}")
    return "\n".join(lines) + "\n"


def render_table() -> str:
    rows = [
        "| setting (file key) | flag | env | default | what it does, what it trades |",
        "|---|---|---|---|---|",
    ]
    for f in settings_fields():
        value = _default(f)
        default = "unset" if value is None else f"`{_toml_value(value)}`"
        doc = f.metadata["doc"].replace("|", "\\|")
        rows.append(
            f"| `{f.name}` | `{_cli_flag(f.name)}` | `{ENV_PREFIX}{f.name.upper()}` "
            f"| {default} | {doc} |"
        )
    return "\n".join(rows) + "\n"


def error_classes() -> list[type[errors.TtsError]]:
    """Every error a client can get, in the order errors.py defines them."""
    found = [
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.TtsError) and cls is not errors.TtsError
    ]
    return found


def render_error_table() -> str:
    rows = ["| code | meaning |", "|---|---|"]
    for cls in error_classes():
        doc = " ".join((cls.__doc__ or "").split()).replace("|", "\\|")
        rows.append(f"| `{cls.code}` | {doc} |")
    return "\n".join(rows) + "\n"


#: README sections between `<!-- NAME:start -->` and `<!-- NAME:end -->`, and their renderers.
README_SECTIONS = {"settings-table": render_table, "error-table": render_error_table}


def render_readme(readme: str) -> str:
    """The README with every generated section rendered anew."""
    for name, render in README_SECTIONS.items():
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        i, j = readme.index(start) + len(start), readme.index(end)
        readme = readme[:i] + render() + readme[j:]
    return readme


def _wrap(text: str, width: int) -> list[str]:
    out: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        out.append(line)
    return out


def write(root: Path) -> None:
    """Rewrite the generated files under the checkout at ``root``."""
    (root / "config" / "wyoming-tts.toml").write_text(render_config())
    readme = root / "README.md"
    readme.write_text(render_readme(readme.read_text()))


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
