"""The voice catalog: what is installed, read from the data dirs; voice configs and speakers."""

from __future__ import annotations

import os
from pathlib import Path

from wyoming_tts.voices.catalog import VoiceCatalog, parse_voice_config

from .conftest import TRIO_CONFIG, FakeClock, link_voice


def test_catalog_config_cached_by_mtime(tmp_path: Path) -> None:
    clock = FakeClock()
    link_voice(tmp_path, "en_US-y-medium")
    catalog = VoiceCatalog([tmp_path], ttl=60, clock=clock)
    assert "en_US-y-medium" in catalog.refresh()
    assert catalog.config_reads == 1
    catalog.refresh(force=True)
    assert catalog.config_reads == 1  # unchanged mtime: cached
    config = tmp_path / "en_US-y-medium.onnx.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    catalog.refresh(force=True)
    assert catalog.config_reads == 2
    link_voice(tmp_path, "en_US-z-medium")
    assert "en_US-z-medium" not in catalog.refresh()  # TTL not passed
    clock.now += 61
    assert "en_US-z-medium" in catalog.refresh()


def test_speakers_by_name_or_id() -> None:
    info = parse_voice_config("en_GB-trio-medium", TRIO_CONFIG)
    assert info.speaker_id("bob") == 1
    assert info.speaker_id("2") == 2
    assert info.speaker_id(None) is None
    assert info.has_speaker("alice") and info.has_speaker("0")
    for missing in ("dave", "3", "-1", ""):
        assert info.speaker_id(missing) is None  # the voice's default speaker
        assert not info.has_speaker(missing)
    single = parse_voice_config("en_US-one-medium", {**TRIO_CONFIG, "num_speakers": 1})
    assert single.speaker_id("bob") is None and not single.has_speaker("bob")
