"""Text into sentences: bounded pieces, whole and streamed text cut alike, every word kept."""

from __future__ import annotations

from wyoming_tts.synth.text import SentenceSplitter, split_long, split_text
from wyoming_tts.voices.loader import LoadedVoice


def test_run_on_sentence_is_capped(voice: LoadedVoice) -> None:
    run_on = " ".join(
        ["and then the little robot walked further down the road"] * 90
    )  # ~5,000 chars
    pieces = split_text(run_on, 500)
    assert all(len(p) <= 500 for p in pieces)
    assert " ".join(pieces).split() == run_on.split()
    for piece in pieces[:3]:
        for ids in voice.phoneme_ids(piece, 300):
            assert len(ids) <= 300


def test_split_long_prefers_clauses() -> None:
    text = "First part of the clause, second part of it; third part goes on and on without end"
    pieces = split_long(text, 40)
    assert pieces[0].endswith(",")
    assert all(len(p) <= 40 for p in pieces)


def test_streamed_text_splits_like_whole_text() -> None:
    text = "Hello there. The front door is locked! Is the garage open? It is raining, sadly."
    whole = split_text(text, 500)
    splitter = SentenceSplitter(500)
    streamed: list[str] = []
    for i in range(0, len(text), 7):
        streamed.extend(splitter.add(text[i : i + 7]))
    streamed.extend(splitter.finish())
    assert streamed == whole
    assert len(whole) == 4


def test_stream_without_boundaries_is_bounded() -> None:
    splitter = SentenceSplitter(100)
    out: list[str] = []
    for _ in range(2000):
        out.extend(splitter.add("word "))
    pending = splitter._detector.remaining_text + splitter._detector.current_sentence
    assert len(pending) <= 200
    out.extend(splitter.finish())
    assert all(len(p) <= 100 for p in out)
    assert sum(p.count("word") for p in out) == 2000


def test_a_leading_utterance_ends_at_its_clause_and_never_mid_clause(voice: LoadedVoice) -> None:
    """With lead_ids, a long first utterance ends at its last clause mark within them."""
    sentence = (
        "The old lighthouse stood at the end of a narrow spit of land, where the river met "
        "the sea and the water changed colour from brown to a deep and restless green."
    )
    (whole,) = voice.phoneme_ids(sentence)
    lead, rest = voice.phoneme_ids(sentence, lead_ids=170)
    assert len(lead) <= 170 < len(whole)
    comma = voice.phonemizer.config.phoneme_id_map[","][0]
    assert comma in lead[-4:]  # the clause mark, then the pad and EOS
    assert len(lead) + len(rest) in range(len(whole) - 4, len(whole) + 5)
    no_clause = sentence.replace(",", "")
    assert len(voice.phoneme_ids(no_clause, lead_ids=170)) == 1
    assert len(voice.phoneme_ids("The kettle began to sing.", lead_ids=170)) == 1
