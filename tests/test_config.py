"""Settings: one direction of precedence, clear one-line errors, docs that cannot drift."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wyoming_tts.config import ConfigError, Settings, load_settings, settings_fields
from wyoming_tts.docs import error_classes, render_config, render_readme

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings, warnings = load_settings(["--config", str(ROOT / "config/wyoming-tts.toml")], {})
    assert settings == Settings()
    assert settings.uri == "tcp://0.0.0.0:10200"
    assert settings.voice == "en_US-joe-medium"
    assert settings.samples_per_chunk == 1024
    assert warnings == []


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "[pool]\nmax_voices = 5\nidle_timeout = 30.0\n[synthesis]\nsentence_silence = 0.2\n",
    )
    env = {"WYOMING_TTS_MAX_VOICES": "6", "WYOMING_TTS_SENTENCE_SILENCE": "0.3"}
    settings, _ = load_settings(["--config", str(cfg), "--max-voices", "7"], env)
    assert settings.max_voices == 7  # CLI beats env and file
    assert settings.sentence_silence == 0.3  # env beats file
    assert settings.idle_timeout == 30.0  # file beats default


def test_wyoming_piper_flags(tmp_path: Path) -> None:
    settings, warnings = load_settings(
        [
            "--voice",
            "en_US-joe-medium",
            "--data-dir",
            str(tmp_path),
            "--data-dir",
            str(tmp_path / "b"),
            "--speaker",
            "1",
            "--length-scale",
            "1.2",
            "--noise-scale",
            "0.5",
            "--noise-w",
            "0.6",
            "--sentence-silence",
            "0.1",
            "--samples-per-chunk",
            "512",
            "--auto-punctuation",
            ".?!",
            "--no-streaming",
            "--zeroconf",
            "--debug",
            "--log-format",
            "%(message)s",
            "--download-dir",
            "/tmp/x",
            "--update-voices",
        ],
        {},
    )
    assert settings.data_dirs == (tmp_path, tmp_path / "b")
    assert settings.speaker == "1"
    assert settings.length_scale == 1.2
    assert settings.noise_w_scale == 0.6
    assert settings.samples_per_chunk == 512
    assert settings.streaming is False
    assert settings.zeroconf == "wyoming-tts"
    assert settings.debug is True
    assert len(warnings) == 2


def test_zeroconf_name_and_env_lists() -> None:
    settings, _ = load_settings(
        ["--zeroconf", "kitchen"], {"WYOMING_TTS_PRELOAD": "a, b", "WYOMING_TTS_MAX_VOICES": "4"}
    )
    assert settings.zeroconf == "kitchen"
    assert settings.preload == ("a", "b")
    assert settings.preload_voices == ("en_US-joe-medium", "a", "b")


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [
        (["--max-voices", "0"], {}, "max_voices"),
        (["--max-voices", "three"], {}, "max_voices"),
        ([], {"WYOMING_TTS_IDLE_TIMEOUT": "-1"}, "idle_timeout"),
        ([], {"WYOMING_TTS_DEBUG": "maybe"}, "debug"),
        (["--uri", "http://x:1"], {}, "uri"),
        (["--uri", "tcp://localhost"], {}, "uri"),
        (["--length-scale", "nan"], {}, "length_scale"),
        (["--zeroconf", "--uri", "stdio://"], {}, "zeroconf"),
    ],
)
def test_invalid_values_name_the_key(argv: list[str], env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        load_settings(argv, env)


def test_bad_file_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^max_voices: "):
        load_settings(["--config", str(write(tmp_path, 'max_voices = "3"'))], {})
    with pytest.raises(ConfigError, match=r"^nonsense: unknown setting"):
        load_settings(["--config", str(write(tmp_path, "nonsense = 1"))], {})
    with pytest.raises(ConfigError, match=r"^config: "):
        load_settings(["--config", str(write(tmp_path, "max_voices = = 1"))], {})


def test_config_file_and_readme_document_every_setting_and_error() -> None:
    """The generated config file and README tables match the code (run script/gen-docs)."""
    assert (ROOT / "config/wyoming-tts.toml").read_text() == render_config()
    readme = (ROOT / "README.md").read_text()
    assert readme == render_readme(readme)
    for f in settings_fields():
        assert f"`{f.name}`" in readme
    for cls in error_classes():
        assert f"| `{cls.code}` |" in readme


def test_workers_default_to_one_per_core() -> None:
    """One worker per core, unless set."""
    own, _ = load_settings([], {})
    assert own.effective_workers == (os.cpu_count() or 1)
    fixed, _ = load_settings([], {"WYOMING_TTS_WORKERS": "3"})
    assert fixed.effective_workers == 3


def test_a_voice_served_whole_takes_every_worker_core() -> None:
    """Its one run cannot be cut into parts, so it gets the threads the workers would."""
    own, _ = load_settings([], {})
    assert own.intra_op_threads == 1
    assert own.whole_voice_threads == (os.cpu_count() or 1)
    few, _ = load_settings(["--workers", "1", "--intra-op-threads", "2"], {})
    assert few.whole_voice_threads == 2


def test_removed_settings_warn_instead_of_failing(tmp_path: Path) -> None:
    """An old config file, environment or command line still starts, with one warning each."""
    old = tmp_path / "old.toml"
    old.write_text("[synthesis]\nmax_chunk_frames = 100\nmax_voices = 2\n")
    settings, warnings = load_settings(
        ["--config", str(old), "--shared-threads", "--read-timeout", "3"],
        {"WYOMING_TTS_CATALOG_TTL": "5"},
    )
    assert settings.max_voices == 2
    assert len(warnings) == 4
    assert all("no longer a setting" in w for w in warnings)
    assert any("max_chunk_frames" in w for w in warnings)
    bad = tmp_path / "typo.toml"
    bad.write_text("max_chunk_frame = 100\n")
    with pytest.raises(ConfigError, match=r"^max_chunk_frame: unknown setting"):
        load_settings(["--config", str(bad)], {})
