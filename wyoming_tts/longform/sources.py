"""Inputs to chapters: a text, stdin, .txt, .md, .epub (spine order), .pdf (outline).

Everything here blocks (file reads, zip and PDF parsing): the command runs it
before its event loop starts or on a thread. A bad input raises `InputError`
with one line for the user.
"""

from __future__ import annotations

import html.parser
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Extensions read as each kind of input.
TEXT_SUFFIXES = (".txt", ".text")
MARKDOWN_SUFFIXES = (".md", ".markdown")
#: Encryption algorithms that only obfuscate embedded fonts (IDPF, Adobe): not DRM.
_FONT_OBFUSCATION = ("http://www.idpf.org/2008/embedding", "http://ns.adobe.com/pdf/enc#RC")
_ENCRYPTED_DATA = re.compile(r"<(?:\w+:)?EncryptedData\b.*?</(?:\w+:)?EncryptedData>", re.DOTALL)
_HEADING = re.compile(r"^# +(.+?)\s*#*\s*$", re.MULTILINE)
#: HTML elements whose end is a paragraph break when an EPUB page becomes text.
_BLOCKS = frozenset(
    [
        "p",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "li",
        "blockquote",
        "br",
        "tr",
        "section",
        "article",
        "header",
        "footer",
        "pre",
        "dd",
        "dt",
    ]
)
_SKIPPED = frozenset(("script", "style", "head", "title", "nav"))


class InputError(Exception):
    """An input we cannot read; the message is one line for the user."""


@dataclass(frozen=True)
class Chapter:
    title: str
    text: str
    markdown: bool = False
    """Read through the LLM-text cleanup (markdown to words) before it is spoken."""


@dataclass(frozen=True)
class Book:
    title: str
    chapters: tuple[Chapter, ...]


def read_text(text: str, title: str = "text", markdown: bool = True) -> Book:
    """A text given on the command line or on stdin: one chapter."""
    return Book(title, (Chapter(title, text, markdown=markdown),))


def read_path(path: Path) -> Book:
    """The chapters of a file, by its extension."""
    suffix = path.suffix.lower()
    readers: dict[str, Callable[[Path], Book]] = {
        **dict.fromkeys(TEXT_SUFFIXES, _read_txt),
        **dict.fromkeys(MARKDOWN_SUFFIXES, _read_markdown),
        ".epub": _read_epub,
        ".pdf": _read_pdf,
    }
    if suffix not in readers:
        known = ", ".join(sorted(readers))
        raise InputError(f"{path}: unknown format {suffix or '(no extension)'!r} (known: {known})")
    reader = readers[suffix]
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        return reader(path)
    except InputError:
        raise
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror or err}") from None
    except Exception as err:  # a damaged file, whatever the library's error
        raise InputError(f"{path}: cannot read as {suffix[1:]}: {_first_line(err)}") from None


def decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name}: not UTF-8 text") from None


def _read_txt(path: Path) -> Book:
    return Book(path.stem, (Chapter(path.stem, decode(path.read_bytes(), str(path))),))


def _read_markdown(path: Path) -> Book:
    """A chapter per level-1 heading (the text before the first one is its own)."""
    text = decode(path.read_bytes(), str(path))
    headings = list(_HEADING.finditer(text))
    if len(headings) < 2:
        return Book(path.stem, (Chapter(path.stem, text, markdown=True),))
    chapters = []
    if text[: headings[0].start()].strip():
        chapters.append(Chapter(path.stem, text[: headings[0].start()], markdown=True))
    for heading, after in zip(headings, [*headings[1:], None], strict=True):
        end = after.start() if after is not None else len(text)
        chapters.append(Chapter(heading.group(1), text[heading.start() : end], markdown=True))
    return Book(path.stem, tuple(chapters))


def _read_epub(path: Path) -> Book:
    """Chapters in spine order; pages with no text (covers, images) are left out."""
    from ebooklib import ITEM_DOCUMENT, epub

    _refuse_drm(path)
    book = epub.read_epub(str(path), options={"ignore_ncx": True})
    titles = _toc_titles(book.toc)
    chapters: list[Chapter] = []
    for idref, linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is None or item.get_type() != ITEM_DOCUMENT or linear == "no":
            continue
        if "nav" in (getattr(item, "properties", None) or ()):  # the table of contents
            continue
        page = _HtmlText()
        page.feed(item.get_content().decode("utf-8", errors="replace"))
        text = page.text()
        if not text.strip():
            continue
        name = item.get_name()
        title = titles.get(name) or page.heading or f"chapter {len(chapters) + 1}"
        chapters.append(Chapter(title, text))
    meta = book.get_metadata("DC", "title")
    if not chapters:
        raise InputError(f"{path}: the book has no text")
    return Book(str(meta[0][0]) if meta else path.stem, tuple(chapters))


def _refuse_drm(path: Path) -> None:
    """An EPUB with encrypted content (DRM) cannot be read aloud; obfuscated fonts can."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            listing = (
                archive.read("META-INF/encryption.xml").decode("utf-8", "replace")
                if "META-INF/encryption.xml" in names
                else ""
            )
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not an EPUB (not a zip archive)") from None
    encrypted = _ENCRYPTED_DATA.findall(listing)
    fonts_only = all(any(a in entry for a in _FONT_OBFUSCATION) for entry in encrypted)
    if "META-INF/rights.xml" in names or not fonts_only:
        raise InputError(f"{path}: the book is encrypted (DRM); it cannot be read")


def _toc_titles(toc: Any) -> dict[str, str]:
    """Chapter titles by file name, from the table of contents."""
    titles: dict[str, str] = {}
    for entry in toc:
        if isinstance(entry, tuple):
            section, children = entry
            titles.update(_toc_titles(children))
            entry = section
        href = getattr(entry, "href", None)
        title = getattr(entry, "title", None)
        if href and title:
            titles.setdefault(str(href).split("#")[0], str(title))
    return titles


class _HtmlText(html.parser.HTMLParser):
    """The words of an XHTML page, blocks as paragraphs; its first heading as its title."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skip = 0
        self._in_heading = False
        self._heading: list[str] = []
        self.heading: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip += 1
        elif tag in ("h1", "h2", "h3") and self.heading is None:
            self._in_heading = True
        if tag in _BLOCKS:
            self._parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag in ("h1", "h2", "h3") and self._in_heading:
            self._in_heading = False
            self.heading = " ".join("".join(self._heading).split()) or None
            if self.heading:
                self._parts.append(".")  # a heading is said as a sentence of its own
        if tag in _BLOCKS:
            self._parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self._parts.append(data)
        if self._in_heading:
            self._heading.append(data)

    def text(self) -> str:
        return "".join(self._parts)


def _read_pdf(path: Path) -> Book:
    """The text of every page; a chapter per top-level outline entry where there is one."""
    import pypdf

    try:
        reader = pypdf.PdfReader(str(path))
    except pypdf.errors.PdfReadError as err:
        raise InputError(f"{path}: not a readable PDF: {_first_line(err)}") from None
    if reader.is_encrypted:
        try:
            unlocked = reader.decrypt("")
        except Exception:  # a cipher pypdf cannot open without extra packages
            unlocked = pypdf.PasswordType.NOT_DECRYPTED
        if unlocked == pypdf.PasswordType.NOT_DECRYPTED:
            raise InputError(f"{path}: the PDF is encrypted; it cannot be read")
    pages = [page.extract_text() or "" for page in reader.pages]
    if not any(p.strip() for p in pages):
        raise InputError(f"{path}: the PDF has no text (a scan? it would need OCR)")
    starts = _outline_starts(reader, len(pages))
    metadata: Any = reader.metadata or {}
    title = str(metadata.get("/Title") or path.stem)
    if not starts:
        return Book(title, (Chapter(title, "\n\n".join(pages)),))
    chapters = []
    if starts[0][0] > 0:
        chapters.append(Chapter(title, "\n\n".join(pages[: starts[0][0]])))
    for (first, name), following in zip(starts, [*starts[1:], None], strict=True):
        last = following[0] if following is not None else len(pages)
        chapters.append(Chapter(name, "\n\n".join(pages[first:last])))
    return Book(title, tuple(c for c in chapters if c.text.strip()))


def _outline_starts(reader: Any, num_pages: int) -> list[tuple[int, str]]:
    """(first page, title) of each top-level outline entry, in page order."""
    starts: dict[int, str] = {}
    try:
        outline = reader.outline
    except Exception:  # a broken outline: read the text as one chapter
        return []
    for entry in outline:
        if isinstance(entry, list):
            continue  # children of the entry before: inside its chapter
        try:
            page = reader.get_destination_page_number(entry)
        except Exception:
            continue
        if page is not None and 0 <= page < num_pages:
            starts.setdefault(page, str(entry.title))
    return sorted(starts.items())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
