"""Cleanup of LLM text alone: markdown, emoji, URLs and symbols out, ordinary text untouched."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wyoming_tts.synth.cleanup import Cleaner, clean_text


def spoken(text: str) -> str:
    return " ".join(clean_text(text).split())


def said(text: str) -> list[str]:
    """What is spoken: the words, in order, and where sentences end. Spacing around what
    was dropped may differ (a stream cut between words cannot take back a space)."""
    return re.findall(r"\[\[.*?\]\]|\w+|[.!?]", text)


@pytest.mark.parametrize(
    ("marked", "plain"),
    [
        ("## Weather today", "Weather today."),
        ("It is **sunny** and *warm* today.", "It is sunny and warm today."),
        ("- Turn on the lights\n- Close the blinds", "Turn on the lights. Close the blinds."),
        ("1. Buy milk\n2. Buy eggs", "Buy milk. Buy eggs."),
        ("Run `automation.reload` now.", "Run automation.reload now."),
        ("Read [the docs](https://www.home-assistant.io/docs) first.", "Read the docs first."),
        ("Before.\n\n```yaml\nlight: on\n```\n\nAfter.", "Before. After."),
        ("Idea 💡 here 🌞.", "Idea here."),
        (
            "See https://www.home-assistant.io/docs/automation/ for more.",
            "See home-assistant.io for more.",
        ),
        ("Go to www.example.com/a?b=c.", "Go to example.com."),
        ("A | table | row ~ with # stray ^ marks", "A table row with stray marks"),
        ("Say [[ hɛˈloʊ ]] slowly.", "Say [[ hɛˈloʊ ]] slowly."),
        ("> A quote, *emphasised*.", "A quote, emphasised."),
        ("Picture ![a cat](cat.png) here.", "Picture here."),
        ("snake_case and <b>tags</b>", "snake case and tags"),
    ],
)
def test_markup_becomes_its_words(marked: str, plain: str) -> None:
    assert spoken(marked) == plain


def test_emoji_can_be_named() -> None:
    assert " ".join(clean_text("Idea 💡 here.", name_emoji=True).split()) == "Idea light bulb here."


ROOMS = ["kitchen", "living room", "garage", "bedroom", "office", "hallway"]
STATES = ["on", "off", "at 40%", "open", "locked"]
TEMPLATES = [
    "The {room} lights are {state}.",
    "It's 21 °C in the {room}, and the humidity is 45%.",
    "Your timer for 10 minutes has started; I'll tell you when it's done.",
    "The {room} door is {state} — shall I close it?",
    "Tomorrow's forecast: cloudy, with a high of 14 degrees and a low of 6.",
    'She said "good night" and the {room} went quiet (at last).',
    "Electricity cost $4.20 today, 12% less than yesterday.",
    "Playing music by AC/DC & Queen in the {room}!",
    "Is the {room} window {state}? I'm not sure.",
    "The package from Smith & Co. arrives at 3:30 p.m. on Thursday.",
]


def ordinary_sentences() -> list[str]:
    out = []
    for template, room, state in itertools.product(TEMPLATES, ROOMS, STATES):
        out.append(template.format(room=room, state=state))
    return sorted(set(out))


def test_ordinary_sentences_are_unchanged() -> None:
    sentences = ordinary_sentences()
    assert len(sentences) >= 100
    for sentence in sentences:
        assert spoken(sentence) == sentence
    paragraph = " ".join(sentences[:40])
    assert spoken(paragraph) == paragraph


MARKDOWN_TEXT = st.lists(
    st.sampled_from([*"ab .!?*_`[]()#-\n:/w1", "https://", "💡", "[[ x ]]", "```", "**"]),
    max_size=40,
).map("".join)


@settings(max_examples=3000, deadline=None)
@given(text=MARKDOWN_TEXT, cuts=st.lists(st.integers(0, 200), max_size=8))
@example(text="a**a a**", cuts=[])  # intraword `**`: one delimiter run left open
@example(text="a _https://a_", cuts=[])  # `_` after the cut's space opens emphasis
@example(text="a*a** a*", cuts=[])  # rule of three: `*` and `**` do not pair, both stay open
@example(text="_https://a a_", cuts=[])  # `_` emphasis open across the space after a URL
def test_streamed_in_any_split_cleans_like_whole(text: str, cuts: list[int]) -> None:
    """Home Assistant streams LLM text split anywhere, even inside `**` or a URL."""
    points = sorted({c for c in cuts if c < len(text)})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    cleaner = Cleaner(eager=True)  # as streams are cleaned: cut between words too
    streamed = "".join(out for piece in pieces for out in cleaner.add(piece))
    streamed += "".join(cleaner.finish())
    assert said(streamed) == said(clean_text(text))


def test_a_stream_is_held_back_by_at_most_a_word() -> None:
    """Open markup holds text back until it closes; plain words go on at once."""
    cleaner = Cleaner(eager=True)
    assert list(cleaner.add("It is **sunny")) == ["It ", "is "]
    assert list(cleaner.add("** today. And")) == ["sunny ", "today. "]
    assert list(cleaner.add(" warm.\n")) == ["And ", "warm.\n"]
    assert list(cleaner.add("## A heading")) == []  # a heading's words stay together
    assert list(cleaner.add(" here\n")) == ["A heading here.\n"]
