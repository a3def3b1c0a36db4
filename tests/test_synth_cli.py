"""`wyoming-tts synth`: books and texts to files, as a user runs it.

Inputs are made here: EPUBs with ebooklib, PDFs with a minimal writer (pypdf adds
outlines and encryption). Most runs are in-process (`main`), so they share this
process's split-graph cache; Ctrl-C is a real SIGINT to a subprocess. What is
checked is what a listener gets: files that open, in the format and rate asked
for, not silence, as long as the text.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile

from wyoming_tts.__main__ import main
from wyoming_tts.longform import plan as plan_module
from wyoming_tts.longform.plan import file_name, groups
from wyoming_tts.synth.chunking import FIRST_CHUNK_FRAMES, fixed_chunk
from wyoming_tts.voices.loader import MAX_CHUNK_FRAMES

from .conftest import rms_dbfs

#: Noise off: the same text gives the same samples on every run.
QUIET_NOISE = ("--noise-scale", "0", "--noise-w-scale", "0")
CHAPTERS = (
    ("The Harbour", "The boats came in at dawn. Gulls followed them, loud and hungry."),
    ("A Storm", "By noon the sky had turned grey. The wind rose over the water."),
    ("Home Again", "At last the lamps were lit. Everyone sat down to a warm supper."),
)


def synth(*args: str | Path, cache_dir: Path) -> int:
    return main(["synth", *map(str, args), "--cache-dir", str(cache_dir), "--quiet"])


def make_epub(path: Path, chapters: Sequence[tuple[str, str]]) -> Path:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("test-book")
    book.set_title("A Test Book")
    book.set_language("en")
    items = []
    for i, (title, body) in enumerate(chapters):
        item = epub.EpubHtml(title=title, file_name=f"chap{i}.xhtml", lang="en")
        heading = f"<h1>{title}</h1>" if body.strip("— …") else ""  # a break has none
        item.content = f"<html><body>{heading}<p>{body}</p></body></html>"
        book.add_item(item)
        items.append(item)
    book.toc = items
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]  # the nav page is no chapter
    epub.write_epub(str(path), book)
    return path


def pdf_bytes(pages: Sequence[str]) -> bytes:
    """A PDF with one Helvetica text page per entry (empty: a page with no text)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for i, text in enumerate(pages):
        words, lines = text.split(), []
        while words:
            lines.append(" ".join(words[:10]))
            words = words[10:]
        shown = " ".join(f"({line}) '" for line in lines)
        stream = f"BT /F1 12 Tf 72 720 Td 14 TL {shown} ET" if lines else ""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources "
            f"<< /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream".encode())
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out


def make_pdf(
    path: Path, pages: Sequence[str], outline: Sequence[tuple[str, int]] = (), password: str = ""
) -> Path:
    import pypdf

    path.write_bytes(pdf_bytes(pages))
    if outline or password:
        writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(str(path)))
        for title, page in outline:
            writer.add_outline_item(title=title, page_number=page)
        if password:
            writer.encrypt(password, algorithm="RC4-128")
        with path.open("wb") as handle:
            writer.write(handle)
    return path


def assert_heard(path: Path, text: str, rate: int = 22050) -> np.ndarray:
    """A file a player opens: mono at ``rate``, not silence, as long as ``text`` says."""
    samples, file_rate = soundfile.read(path, dtype="int16")
    assert file_rate == rate
    assert samples.ndim == 1
    assert rms_dbfs(samples) > -35, f"{path.name} is near silence"
    seconds = len(samples) / file_rate
    chars_per_second = len(text) / seconds
    assert 6 < chars_per_second < 30, f"{seconds:.2f}s of audio for {len(text)} chars"
    return np.asarray(samples)


def playlist(out_dir: Path) -> list[str]:
    lines = (out_dir / "playlist.m3u").read_text().splitlines()
    assert lines[0] == "#EXTM3U"
    return [line for line in lines[1:] if not line.startswith("#")]


def no_temp_files(out_dir: Path) -> bool:
    return not [p for p in out_dir.iterdir() if p.name.endswith(".part")]


# ---------------------------------------------------------------------- books


def test_epub_chapters_files_and_playlist(tmp_path: Path, cache_dir: Path) -> None:
    book = make_epub(tmp_path / "book.epub", [*CHAPTERS[:2], ("Break", "— … —"), CHAPTERS[2]])
    out = tmp_path / "out"
    assert synth(book, "--out-dir", out, *QUIET_NOISE, "--jobs", "2", cache_dir=cache_dir) == 0
    names = ["01-the-harbour.wav", "02-a-storm.wav", "04-home-again.wav"]
    assert playlist(out) == names  # spine order; the page with nothing to say is skipped
    for name, (title, body) in zip(names, CHAPTERS, strict=True):
        assert_heard(out / name, f"{title}. {body}")
    assert not (out / "03-break.wav").exists()
    manifest = json.loads((out / "wyoming-tts-manifest.json").read_text())
    assert sorted(manifest["files"]) == names
    assert no_temp_files(out)


def test_pdf_outline_gives_chapters(tmp_path: Path, cache_dir: Path) -> None:
    pages = [body for _, body in CHAPTERS]
    outline = [(title, i) for i, (title, _) in enumerate(CHAPTERS)]
    pdf = make_pdf(tmp_path / "book.pdf", pages, outline)
    out = tmp_path / "out"
    assert synth(pdf, "--out-dir", out, "--format", "flac", cache_dir=cache_dir) == 0
    assert playlist(out) == ["01-the-harbour.flac", "02-a-storm.flac", "03-home-again.flac"]
    for name, body in zip(playlist(out), pages, strict=True):
        assert soundfile.info(str(out / name)).format == "FLAC"
        assert_heard(out / name, body)


def test_pdf_without_outline_is_one_file(tmp_path: Path, cache_dir: Path) -> None:
    pdf = make_pdf(tmp_path / "notes.pdf", [CHAPTERS[0][1], CHAPTERS[1][1]])
    out = tmp_path / "notes.mp3"
    assert synth(pdf, "--out", out, cache_dir=cache_dir) == 0
    assert soundfile.info(str(out)).format == "MP3"
    assert_heard(out, CHAPTERS[0][1] + " " + CHAPTERS[1][1])


@pytest.mark.parametrize(
    ("fmt", "rate", "container"), [("wav", 22050, "WAV"), ("opus", 24000, "OGG")]
)
def test_text_argument_in_each_format(
    tmp_path: Path, cache_dir: Path, fmt: str, rate: int, container: str
) -> None:
    text = "Good evening. The front door is locked and the lights are off."
    out = tmp_path / f"reply.{fmt}"
    assert synth("--text", text, "--out", out, cache_dir=cache_dir) == 0
    assert soundfile.info(str(out)).format == container
    assert_heard(out, text, rate)


def test_stdin(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "Reading from a pipe works too."
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    out = tmp_path / "piped.wav"
    assert synth("-", "--out", out, cache_dir=cache_dir) == 0
    assert_heard(out, text)


def test_markdown_is_read_as_words(tmp_path: Path, cache_dir: Path) -> None:
    md = tmp_path / "notes.md"
    md.write_text("# First\n\nSome **bold** words.\n\n# Second\n\nA [link](https://example.com).")
    out = tmp_path / "out"
    assert synth(md, "--out-dir", out, cache_dir=cache_dir) == 0
    assert playlist(out) == ["01-first.wav", "02-second.wav"]
    assert_heard(out / "01-first.wav", "First. Some bold words.")


# ---------------------------------------------------------------------- identical, resumable


def test_jobs_1_and_2_write_identical_bytes(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_module, "GROUP_CHARS", 80)  # several groups per chapter
    book = make_epub(tmp_path / "book.epub", CHAPTERS)
    text = " ".join(body for _, body in CHAPTERS)
    outputs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert synth(book, "--out-dir", out, *QUIET_NOISE, "--jobs", jobs, cache_dir=cache_dir) == 0
        single = tmp_path / f"jobs{jobs}.wav"
        assert (
            synth(
                "--text", text, "--out", single, *QUIET_NOISE, "--jobs", jobs, cache_dir=cache_dir
            )
            == 0
        )
        outputs.append(
            [(p.name, p.read_bytes()) for p in sorted(out.glob("*.wav"))]
            + [("single", single.read_bytes())]
        )
    assert len(outputs[0]) == 4
    assert outputs[0] == outputs[1]


def test_seed_fixes_the_noise_for_any_jobs(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plan_module, "GROUP_CHARS", 80)
    text = " ".join(body for _, body in CHAPTERS)
    runs = {}
    for jobs, seed in (("1", "7"), ("2", "7"), ("2", "8")):
        out = tmp_path / f"{jobs}-{seed}.wav"
        assert (
            synth("--text", text, "--out", out, "--seed", seed, "--jobs", jobs, cache_dir=cache_dir)
            == 0
        )
        assert_heard(out, text)
        runs[jobs, seed] = out.read_bytes()
    assert runs["1", "7"] == runs["2", "7"]
    assert runs["2", "8"] != runs["2", "7"]


def test_rerun_skips_what_is_made_and_force_redoes_it(tmp_path: Path, cache_dir: Path) -> None:
    book = tmp_path / "book.epub"
    out = tmp_path / "out"
    make_epub(book, CHAPTERS[:2])
    assert synth(book, "--out-dir", out, cache_dir=cache_dir) == 0
    first, second = out / "01-the-harbour.wav", out / "02-a-storm.wav"
    stamps = {p: p.stat().st_mtime_ns for p in (first, second)}

    make_epub(book, [CHAPTERS[0], ("A Storm", "The storm passed quickly.")])
    assert synth(book, "--out-dir", out, cache_dir=cache_dir) == 0
    assert first.stat().st_mtime_ns == stamps[first]  # same text and settings: kept
    assert second.stat().st_mtime_ns != stamps[second]  # its text changed: redone

    second.write_bytes(second.read_bytes()[:100])  # damaged: its size no longer matches
    assert synth(book, "--out-dir", out, cache_dir=cache_dir) == 0
    assert_heard(second, "A Storm. The storm passed quickly.")
    kept = first.stat().st_mtime_ns
    assert synth(book, "--out-dir", out, "--length-scale", "1.2", cache_dir=cache_dir) == 0
    assert first.stat().st_mtime_ns != kept  # another speed is another audio
    kept = first.stat().st_mtime_ns
    assert (
        synth(book, "--out-dir", out, "--length-scale", "1.2", "--force", cache_dir=cache_dir) == 0
    )
    assert first.stat().st_mtime_ns != kept


def test_ctrl_c_keeps_only_whole_files_and_says_so(tmp_path: Path, cache_dir: Path) -> None:
    chapters = [(f"Part {i}", " ".join([CHAPTERS[i % 3][1]] * 6)) for i in range(1, 7)]
    book = make_epub(tmp_path / "long.epub", chapters)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "wyoming_tts", "synth", str(book), "--out-dir", str(out)]
    command += ["--cache-dir", str(cache_dir), "--jobs", "1"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # stop it once it has finished one chapter
            if "Wrote" in line:
                break
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 130
    assert "interrupted; finished this run: 01-part-1.wav" in rest
    assert no_temp_files(out)
    assert not (out / "playlist.m3u").exists()
    made = sorted(p.name for p in out.glob("*.wav"))
    assert made and len(made) < len(chapters)
    manifest = json.loads((out / "wyoming-tts-manifest.json").read_text())
    assert sorted(manifest["files"]) == made  # every file with a final name is whole
    for name in made:
        soundfile.read(out / name)


# ---------------------------------------------------------------------- bad input


def drm_epub(path: Path) -> Path:
    make_epub(path, CHAPTERS[:1])
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(
            "META-INF/encryption.xml",
            '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container" '
            'xmlns:enc="http://www.w3.org/2001/04/xmlenc#"><enc:EncryptedData>'
            '<enc:EncryptionMethod Algorithm="http://www.w3.org/2001/04/xmlenc#aes128-cbc"/>'
            '<enc:CipherData><enc:CipherReference URI="EPUB/chap0.xhtml"/></enc:CipherData>'
            "</enc:EncryptedData></encryption>",
        )
    return path


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("missing", "no such file"),
        ("directory", "not a file"),
        ("not-utf8", "not UTF-8"),
        ("unknown", "unknown format"),
        ("drm", "encrypted (DRM)"),
        ("broken-epub", "not an EPUB"),
        ("encrypted-pdf", "PDF is encrypted"),
        ("scanned-pdf", "has no text"),
        ("unwritable", "cannot write there"),
        ("no-output", "--out FILE or --out-dir DIR"),
        ("nothing", "nothing that can be spoken"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str], case: str, says: str
) -> None:
    source: Path | str = tmp_path / "in.txt"
    out: list[str | Path] = ["--out-dir", tmp_path / "out"]
    if case == "directory":
        (tmp_path / "in.txt").mkdir()
    elif case == "not-utf8":
        (tmp_path / "in.txt").write_bytes(b"caf\xe9 \xff")
    elif case == "unknown":
        source = tmp_path / "in.docx"
        source.write_text("text")
    elif case == "drm":
        source = drm_epub(tmp_path / "in.epub")
    elif case == "broken-epub":
        source = tmp_path / "in.epub"
        source.write_text("not a zip")
    elif case == "encrypted-pdf":
        source = make_pdf(tmp_path / "in.pdf", ["Secret words."], password="secret")
    elif case == "scanned-pdf":
        source = make_pdf(tmp_path / "in.pdf", ["", ""])
    elif case == "unwritable":
        (tmp_path / "in.txt").write_text("Hello.")
        (tmp_path / "file").write_text("")
        out = ["--out-dir", tmp_path / "file" / "out"]
    elif case == "no-output":
        (tmp_path / "in.txt").write_text("Hello.")
        out = []
    elif case == "nothing":
        (tmp_path / "in.txt").write_text("— … —")
    assert synth(source, *out, cache_dir=cache_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wyoming-tts synth: ") and says in err[0], err
    if (tmp_path / "out").is_dir():
        assert not [p for p in (tmp_path / "out").iterdir() if not p.name.endswith(".json")]


def test_server_flags_still_run_the_server() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "wyoming_tts", "--voice", "x", "--max-voices", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "invalid setting max_voices" in proc.stderr


# ---------------------------------------------------------------------- pure parts


def test_fixed_plan_covers_every_frame_without_crumbs() -> None:
    for total in (1, 40, 300, 363, 364, 365, 700, 1500):
        start, ends = 0, []
        while start < total:
            start = fixed_chunk(start, total, margin=32)
            ends.append(start)
        assert ends[-1] == total
        sizes = np.diff([0, *ends])
        assert (sizes <= MAX_CHUNK_FRAMES + 64).all()
        assert len(sizes) == 1 or sizes[-1] >= FIRST_CHUNK_FRAMES


def test_groups_and_names() -> None:
    cut = groups(["One.", "Two two.", "Three three three."], limit=14)
    assert [g.text for g in cut] == ["One. Two two.", "Three three three."]
    assert file_name(3, 120, "Chapter Three: Ça va?", "wav") == "003-chapter-three-ca-va.wav"
    assert file_name(1, 2, "!!!", "mp3") == "01-chapter.mp3"
    assert os.sep not in file_name(1, 2, "a/../b", "wav")
