"""A user's pronunciations: words replaced by respellings or `[[ phonemes ]]` per language.

Piper reads brand names, acronyms and local place names the way espeak guesses them.
A lexicon file fixes a word once for every reply, before phonemization. It is TOML,
a table per language; the most specific table wins (`en_GB` over `en`)::

    [en]
    nginx = "engine x"
    Wyoming = "[[ waɪˈoʊmɪŋ ]]"

A key in lower case matches the word in any case; a key with capitals matches only
that spelling, so `US` can differ from `us`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: Piper's inline phoneme blocks, which a lexicon never rewrites.
_PHONEMES = re.compile(r"(\[\[.*?\]\])", re.DOTALL)


class LexiconError(ValueError):
    """A lexicon file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Lexicon:
    """Replacements per language code, as the file gives them."""

    tables: Mapping[str, Mapping[str, str]]

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        """Read and check a lexicon file (blocking: call it off the loop)."""
        try:
            with path.open("rb") as handle:
                raw = tomllib.load(handle)
        except OSError as err:
            raise LexiconError(f"lexicon: cannot read {path} ({err.strerror})") from None
        except tomllib.TOMLDecodeError as err:
            raise LexiconError(f"lexicon: {path} is not valid TOML ({err})") from None
        tables: dict[str, dict[str, str]] = {}
        for language, table in raw.items():
            if not isinstance(table, dict):
                raise LexiconError(f"lexicon: {path}: {language} must be a table of words")
            for word, replacement in table.items():
                if not isinstance(replacement, str) or not word.strip():
                    raise LexiconError(f"lexicon: {path}: [{language}] {word!r} must map to text")
            tables[_code(language)] = dict(table)
        return cls(tables)

    def for_language(self, language: str) -> Callable[[str], str] | None:
        """The rewrite for a voice's language (e.g. `en_US`), or None if no table applies."""
        code = _code(language)
        merged: dict[str, str] = {}
        for candidate in (code.split("_")[0], code):  # general first, specific wins
            merged.update(self.tables.get(candidate, {}))
        if not merged:
            return None
        return _Rewrite(merged)


class _Rewrite:
    """One compiled pass over a sentence; phoneme blocks pass through untouched."""

    def __init__(self, entries: Mapping[str, str]) -> None:
        exact = {w: r for w, r in entries.items() if w != w.lower()}
        folded = {w.lower(): r for w, r in entries.items() if w == w.lower()}
        self._exact, self._folded = exact, folded
        words = sorted([*exact, *folded], key=len, reverse=True)  # longest first
        alternatives = "|".join(re.escape(w) for w in words)
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def __call__(self, sentence: str) -> str:
        parts = _PHONEMES.split(sentence)
        for i in range(0, len(parts), 2):  # odd parts are phoneme blocks
            parts[i] = self._pattern.sub(self._replace, parts[i])
        return "".join(parts)

    def _replace(self, match: re.Match[str]) -> str:
        word = match.group(0)
        if word in self._exact:
            return self._exact[word]
        return self._folded.get(word.lower(), word)


def _code(language: str) -> str:
    """`en-us`, `en_US` and `EN_us` are one code: `en_US`."""
    base, _sep, region = language.replace("-", "_").partition("_")
    return f"{base.lower()}_{region.upper()}" if region else base.lower()
