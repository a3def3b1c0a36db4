"""Voices of other languages over real sockets, and how a language picks a voice.

No voice of these languages is at hand, so each is the x_low test voice's model with a
copy of its config naming another espeak voice and language, as Piper's voices of
that language do; the random weights speak whatever phonemes espeak makes. Piper's
extra phonemizers that need packages not installed here (Chinese pinyin, Japanese,
Thai) must fail the voice's load with what to install; Hebrew's ships with piper.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeVoice

from wyoming_tts.errors import VoiceLoadFailed
from wyoming_tts.synth.text import SentenceSplitter, split_long
from wyoming_tts.voices.catalog import VoiceCatalog
from wyoming_tts.voices.loader import LoadOptions, load_voice

from .conftest import Response, Server, connect, read_until, rms_dbfs, run_server

VOICES_DIR = Path(__file__).parent / "voices"
BASE = "en_US-test-x_low"
SENTENCE_SILENCE = 0.25

#: voice name: (espeak voice, language code, text, characters per second of audio)
LANGUAGES: dict[str, tuple[str, str, str, tuple[float, float]]] = {
    "de_DE-test-x_low": ("de", "de_DE", "Das Licht in der Küche ist jetzt an.", (4, 30)),
    "fr_FR-test-x_low": ("fr", "fr_FR", "La lumière de la cuisine est allumée.", (4, 30)),
    "es_ES-test-x_low": ("es", "es_ES", "La luz de la cocina está encendida.", (4, 30)),
    "ru_RU-test-x_low": ("ru", "ru_RU", "Свет на кухне уже включён.", (4, 30)),
    "ar_JO-test-x_low": ("ar", "ar_JO", "الضوء في المطبخ مضاء الآن.", (3, 30)),
    # A syllable per character, ~12 phoneme ids each.
    "zh_CN-test-x_low": ("cmn", "zh_CN", "厨房的灯现在开着。", (0.8, 8)),
}
#: Voices whose phonemizer is one of piper's extras: name -> (phoneme_type, text).
EXTRAS = {
    "he_IL-test-x_low": ("hebrew", "שלום, מה שלומך היום?"),
    "ja_JP-test-x_low": ("japanese", "こんにちは。"),
    "th_TH-test-x_low": ("thai", "สวัสดีครับ"),
    "zh_CN-testpinyin-x_low": ("pinyin", "你好。"),
}


def _write_voice(data: Path, name: str, change: dict[str, Any]) -> None:
    base = json.loads((VOICES_DIR / f"{BASE}.onnx.json").read_text("utf-8"))
    config = copy.deepcopy(base)
    config.update(change)
    os.symlink(VOICES_DIR / f"{BASE}.onnx", data / f"{name}.onnx")
    (data / f"{name}.onnx.json").write_text(json.dumps(config, ensure_ascii=False), "utf-8")


def _language(code: str) -> dict[str, str]:
    family, region = code.split("_")
    return {"code": code, "family": family, "region": region}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("languages")
    _write_voice(data, BASE, {})
    for name, (espeak, code, _, _) in LANGUAGES.items():
        _write_voice(data, name, {"espeak": {"voice": espeak}, "language": _language(code)})
    for name, (phoneme_type, _) in EXTRAS.items():
        code = name.split("-")[0]
        _write_voice(data, name, {"phoneme_type": phoneme_type, "language": _language(code)})
    return data


class _Requests(logging.Handler):
    """The voice of each request, from the one line the server logs per request."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.voices: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = re.match(r"Request voice=(\S+)", record.getMessage())
        if found:
            self.voices.append(found.group(1))


@pytest.fixture(scope="module")
def requests() -> Iterator[_Requests]:
    handler = _Requests()
    logger = logging.getLogger("wyoming_tts")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
async def multilingual(data_dir: Path, cache_dir: Path) -> AsyncIterator[Server]:
    """German by default; every language above, and the extras, installed; noise off, so
    lengths are the same on every run."""
    args = ["--data-dir", str(data_dir), "--cache-dir", str(cache_dir)]
    args += ["--voice", "de_DE-test-x_low", "--max-voices", "4"]
    args += [
        "--sentence-silence",
        str(SENTENCE_SILENCE),
        "--noise-scale",
        "0",
        "--noise-w-scale",
        "0",
    ]
    async with run_server(*args) as srv:
        yield srv


async def _speak(server: Server, text: str, voice: SynthesizeVoice | None) -> Response:
    async with connect(server.uri) as client:
        await client.write_event(Synthesize(text=text, voice=voice).event())
        return await read_until(client, ("audio-stop", "error"))


def _gaps(audio: np.ndarray, seconds: float, rate: int) -> int:
    """Runs of exact silence at least ``seconds`` long (what sentence_silence inserts)."""
    silent = np.concatenate([[0], (audio == 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(silent))
    return int(np.sum(edges[1::2] - edges[0::2] >= seconds * rate * 0.9))


async def test_languages_are_advertised_as_their_config_codes(multilingual: Server) -> None:
    async with connect(multilingual.uri) as client:
        await client.write_event(Describe().event())
        info = Info.from_event((await read_until(client, ("info",))).events[-1])
    languages = {v.name: v.languages for v in info.tts[0].voices}
    for name, (_, code, _, _) in LANGUAGES.items():
        assert languages[name] == [code]
    assert languages["he_IL-test-x_low"] == ["he_IL"]


@pytest.mark.parametrize("name", LANGUAGES)
async def test_language_speaks_end_to_end(multilingual: Server, name: str) -> None:
    """espeak's phonemes of that language, spoken: the voice's format, not silence, and
    as long as the text (one sentence: no gap)."""
    _, _, text, (slowest, fastest) = LANGUAGES[name]
    resp = await _speak(multilingual, text, SynthesizeVoice(name=name))
    assert resp.types[-1] == "audio-stop", resp.error
    assert (resp.start.rate, resp.start.width, resp.start.channels) == (16000, 2, 1)
    assert rms_dbfs(resp.audio) > -35, "audio is near silence"
    assert slowest < len(text) / resp.seconds < fastest, f"{resp.seconds:.2f} s for {text!r}"
    assert _gaps(resp.audio, SENTENCE_SILENCE, 16000) == 0


@pytest.mark.parametrize(
    ("name", "text", "sentences"),
    [
        ("zh_CN-test-x_low", "你好。今天天气很好！你要去哪里？", 3),
        ("ar_JO-test-x_low", "مرحبا، كيف حالك؟ أنا بخير.", 2),
    ],
    ids=["cjk", "arabic"],
)
async def test_sentences_end_at_cjk_and_arabic_marks(
    multilingual: Server, name: str, text: str, sentences: int
) -> None:
    """Each sentence is spoken apart, with the sentence silence between: 。！？ and ؟ end
    one, the Arabic comma does not."""
    resp = await _speak(multilingual, text, SynthesizeVoice(name=name))
    assert resp.types[-1] == "audio-stop", resp.error
    assert _gaps(resp.audio, SENTENCE_SILENCE, 16000) == sentences - 1


def test_long_cjk_and_arabic_sentences_are_cut_at_their_clause_marks() -> None:
    chinese = "今天天气很好，我们去公园散步吧，然后去吃饭，晚上看电影，明天再说。"
    assert split_long(chinese, 20) == [
        "今天天气很好，我们去公园散步吧，",
        "然后去吃饭，晚上看电影，明天再说。",
    ]
    arabic = "مرحبا بك في المنزل، كيف حالك اليوم؛ أتمنى أن تكون بخير"
    assert split_long(arabic, 40) == ["مرحبا بك في المنزل، كيف حالك اليوم؛", "أتمنى أن تكون بخير"]
    splitter = SentenceSplitter()
    pieces = [
        s for chunk in ("你好。今天", "天气很好！你", "要去哪里？") for s in splitter.add(chunk)
    ]
    assert [*pieces, *splitter.finish()] == ["你好。", "今天天气很好！", "你要去哪里？"]


@pytest.mark.parametrize(
    ("language", "voice"),
    [
        ("en", "en_US-"),  # a language alone finds a voice of it (the bundled one or ours)
        ("en-GB", "en_US-"),  # no en_GB voice: another en_* one rather than a refusal
        ("en_US", "en_US-"),
        ("de-DE", "de_DE-test-x_low"),
        ("ar", "ar_JO-test-x_low"),
        ("zh-CN", "zh_CN-test-x_low"),
    ],
)
async def test_home_assistant_language_finds_a_voice(
    multilingual: Server, requests: _Requests, language: str, voice: str
) -> None:
    """Home Assistant may send only the pipeline's language, in its own spelling; the
    default voice (German) does not speak English, so English is looked for."""
    resp = await _speak(multilingual, "Hello.", SynthesizeVoice(language=language))
    assert resp.types[-1] == "audio-stop", resp.error
    assert requests.voices[-1].startswith(voice)


async def test_hebrew_phonemizer_ships_with_piper(multilingual: Server) -> None:
    resp = await _speak(
        multilingual, EXTRAS["he_IL-test-x_low"][1], SynthesizeVoice("he_IL-test-x_low")
    )
    assert resp.types[-1] == "audio-stop", resp.error
    assert rms_dbfs(resp.audio) > -35


@pytest.mark.parametrize(
    ("name", "extra"),
    [("ja_JP-test-x_low", "ja"), ("th_TH-test-x_low", "th"), ("zh_CN-testpinyin-x_low", "zh")],
)
def test_missing_phonemizer_fails_the_load_naming_what_to_install(
    data_dir: Path, tmp_path: Path, name: str, extra: str
) -> None:
    """Before any model is read (no split is cached), with the pip line to fix it."""
    entry = VoiceCatalog([data_dir]).get(name)
    with pytest.raises(VoiceLoadFailed, match=re.escape(f"pip install 'piper-tts[{extra}]'")):
        load_voice(entry, LoadOptions(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("name", "extra"),
    [("ja_JP-test-x_low", "ja"), ("th_TH-test-x_low", "th"), ("zh_CN-testpinyin-x_low", "zh")],
)
async def test_missing_phonemizer_is_the_requests_load_error(
    multilingual: Server, name: str, extra: str
) -> None:
    """Over the socket: the request's `voice-load-failed` names the extra; the server
    keeps serving."""
    resp = await _speak(multilingual, EXTRAS[name][1], SynthesizeVoice(name=name))
    assert resp.error is not None and resp.error.code == "voice-load-failed"
    assert f"piper-tts[{extra}]" in resp.error.text
    again = await _speak(multilingual, "Noch da.", None)
    assert again.types[-1] == "audio-stop" and rms_dbfs(again.audio) > -35
