"""`wyoming-tts synth`: a text, file or book to audio files, N sentence groups at a time.

The speech service is the server's own (pool, scheduler, voices, cleanup), built
for this one process with `workers = --jobs`. Every sentence group is one
request; up to ``jobs`` are synthesized at once and at most ``2 * jobs`` wait
finished, so memory is bounded by the jobs, not by the book. Groups are written
in order, each file renamed into place once whole. Exit codes: 0 done, 2 bad
input (one line says why), 1 a failure of ours, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..audio import silence
from ..config import ConfigError, Settings, load_settings
from ..config import build_parser as build_settings_parser
from ..errors import NoSpeech, TtsError, VoiceLoadFailed
from ..model.noise import utterance_seed
from ..presets import PresetError
from ..runtime.memory import tune_malloc
from ..runtime.ort import share_cpu_arena
from ..runtime.scheduler import Scheduler
from ..speech import SpeechRequest, SpeechService
from ..synth.engine import Synthesizer
from ..synth.lexicon import LexiconError
from ..voices.catalog import VoiceCatalog
from ..voices.loader import LoadOptions
from ..voices.pool import PoolConfig, VoicePool
from .output import (
    EXTENSIONS,
    FORMATS,
    AudioFile,
    Manifest,
    check_writable,
    manifest_path,
    write_playlist,
)
from .plan import Group, Part, Plan, make_plan
from .progress import Progress
from .sources import Book, InputError, decode, read_path, read_text

T = TypeVar("T")

_LOGGER = logging.getLogger("wyoming_tts.synth")
PROG = "wyoming-tts synth"
#: Seconds of silence between chapters written into one file.
CHAPTER_SILENCE = 1.0
#: Finished groups that may wait to be written, per job: keeps every worker busy while
#: the writer waits for the next group in order, and bounds what is held in memory.
BUFFERED_PER_JOB = 2
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
_SUFFIX_FORMATS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".opus": "opus", ".ogg": "opus"}


@dataclass(frozen=True)
class Job:
    """One run, settled before any voice is loaded."""

    settings: Settings
    book: Book
    fmt: str
    jobs: int
    out_file: Path | None
    out_dir: Path | None
    force: bool
    quiet: bool
    seed: int | None = None

    @property
    def directory(self) -> Path:
        if self.out_dir is not None:
            return self.out_dir
        assert self.out_file is not None  # parse_job requires one of them
        return self.out_file.parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,
        description="Speak a text, a .txt/.md file, an EPUB or a PDF into audio files. "
        "Every server setting flag (--voice, --speaker, --length-scale, --noise-scale, "
        "--noise-w-scale, --sentence-silence, --data-dir, --config, ...) works here too.",
    )
    parser.add_argument("input", nargs="?", help="a .txt, .md, .epub or .pdf file; - for stdin")
    parser.add_argument("--text", help="the text to speak (instead of an input file)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--out", type=Path, metavar="FILE", help="one file with every chapter")
    out.add_argument(
        "--out-dir", type=Path, metavar="DIR", help="a file per chapter, NN-title.ext, and a .m3u"
    )
    parser.add_argument("--format", choices=FORMATS, help="default: from --out's suffix, else wav")
    parser.add_argument(
        "--jobs",
        type=_positive,
        default=os.cpu_count() or 1,
        help="sentence groups synthesized at once (default: the CPU count)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed the noise per utterance (from its text and place): the same audio on "
        "every run and for any --jobs, with the voice's natural variation",
    )
    parser.add_argument("--force", action="store_true", help="redo files already made")
    parser.add_argument("--quiet", action="store_true", help="no progress, only errors")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def split_argv(argv: Sequence[str], synth: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """(synth's arguments, the server settings' flags), so each parser sees only its own.

    A setting's value is never taken for the input file (argparse's parse_known_args
    would), and ``--text`` is never read as an abbreviation of ``--text-cleanup``.
    """
    server = build_settings_parser()
    mine = {s for a in synth._actions for s in a.option_strings}
    theirs = {s: a for a in server._actions for s in a.option_strings}
    own: list[str] = []
    settings: list[str] = []
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        flag = token.split("=", 1)[0]
        if token == "--":
            own += [token, *tokens]
            break
        if flag in theirs and flag not in mine:
            settings.append(token)
            nargs = theirs[flag].nargs
            takes_value = nargs is None or (nargs == "?" and tokens and tokens[0][:1] != "-")
            if "=" not in token and takes_value and tokens:
                settings.append(tokens.pop(0))
        else:
            own.append(token)
    return own, settings


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    own, rest = split_argv(argv, parser)
    args = parser.parse_args(own)
    try:
        settings, warnings = load_settings(rest)
    except ConfigError as err:
        print(f"{PROG}: invalid setting {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _configure_logging(settings)
    for warning in warnings:
        _LOGGER.warning(warning)
    try:
        job = parse_job(args, settings)
    except KeyboardInterrupt:  # while reading a big book
        print(f"{PROG}: interrupted before anything was made", file=sys.stderr)
        return EXIT_INTERRUPTED
    except InputError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    tune_malloc()  # before any worker thread exists
    share_cpu_arena()  # before any session is opened
    try:
        return asyncio.run(run(job))
    except KeyboardInterrupt:  # before the loop's own handler was in place
        print(f"{PROG}: interrupted before anything was made", file=sys.stderr)
        return EXIT_INTERRUPTED


def parse_job(args: argparse.Namespace, settings: Settings) -> Job:
    """Read the input and check the output; InputError says what is wrong."""
    if args.out is None and args.out_dir is None:
        raise InputError("say where the audio goes: --out FILE or --out-dir DIR")
    if args.text is not None and args.input is not None:
        raise InputError("give an input file or --text, not both")
    fmt = args.format or (
        _SUFFIX_FORMATS.get(args.out.suffix.lower(), "wav") if args.out is not None else "wav"
    )
    if args.text is not None:
        book = read_text(args.text, markdown=settings.text_cleanup)
    elif args.input in (None, "-"):
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no input: give a file, - for stdin, or --text TEXT")
        book = read_text(
            decode(sys.stdin.buffer.read(), "stdin"), "stdin", markdown=settings.text_cleanup
        )
    else:
        book = read_path(Path(args.input))
    out_file = args.out
    if out_file is not None and out_file.is_dir():
        raise InputError(f"{out_file}: is a directory (use --out-dir for a file per chapter)")
    job = Job(
        settings, book, fmt, args.jobs, out_file, args.out_dir, args.force, args.quiet, args.seed
    )
    check_writable(job.directory)
    return job


async def run(job: Job) -> int:
    """Synthesize the job; Ctrl-C (or SIGTERM) stops within a chunk and says what is done."""
    task = asyncio.current_task()
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        if task is not None:
            task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, interrupt)
    runner = _Runner(job)
    try:
        return await runner.run()
    except asyncio.CancelledError:
        if not interrupted:
            raise
        runner.report_interrupted()
        return EXIT_INTERRUPTED
    except TtsError as err:
        print(f"{PROG}: {err.text}", file=sys.stderr)
        return 1 if isinstance(err, VoiceLoadFailed) else EXIT_BAD_INPUT
    except (PresetError, LexiconError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def open_service(settings: Settings, seedable: bool = False) -> AsyncIterator[SpeechService]:
    """The server's speech service for this process; its threads end with the block."""
    scheduler = Scheduler(settings.effective_workers)
    pool = VoicePool(
        PoolConfig(
            load=LoadOptions(
                cache_dir=settings.effective_cache_dir,
                intra_op_threads=settings.intra_op_threads,
                whole_voice_threads=settings.whole_voice_threads,
                keep_decoder_memory=settings.keep_decoder_memory,
                seedable=seedable,
            ),
            max_voices=1,
            idle_timeout=0.0,
            keep_alive_interval=0.0,
            memory_threshold_bytes=settings.effective_memory_threshold_mb * 2**20,
            pin_preloaded=True,
        ),
        VoiceCatalog(settings.all_data_dirs),
        scheduler,
    )
    try:
        # No phrase cache: a book repeats few sentences, and seeded noise differs by place.
        service = SpeechService(settings, pool, Synthesizer(scheduler), scheduler)
        await service.prepare()  # presets and the lexicon, as the server has them
        yield service
    finally:
        await pool.close()
        await asyncio.to_thread(scheduler.shutdown)


class _Runner:
    """One run's state: what is planned, written and skipped, for the report at the end."""

    def __init__(self, job: Job) -> None:
        self.job = job
        # Cleanup runs once, in planning (for the whole chapter, so markdown spanning a
        # group's edge reads right); the service only normalises and splits each group.
        self.settings = dataclasses.replace(
            job.settings, workers=job.jobs, text_cleanup=False, max_queue=max(8, job.jobs)
        )
        self.written: list[str] = []
        self.skipped: list[str] = []
        self.progress: Progress | None = None
        self._pending_io: asyncio.Future[Any] | None = None

    async def run(self) -> int:
        job = self.job
        async with open_service(self.settings, seedable=job.seed is not None) as service:
            await service.pool.prime((self.settings.voice,))
            async with service.pool.acquire(self.settings.voice) as voice:
                rate = voice.sample_rate
                model_stat = await self._io(voice.entry.model_path.stat)
            plan = await self._io(
                functools.partial(
                    make_plan,
                    job.book,
                    single_file=job.out_file.name if job.out_file is not None else None,
                    ext=EXTENSIONS[job.fmt],
                    audio=self._audio_settings(rate, (model_stat.st_size, model_stat.st_mtime_ns)),
                    cleanup=job.settings.text_cleanup,
                    name_emoji=job.settings.name_emoji,
                    punctuation=job.settings.auto_punctuation,
                )
            )
            if not plan.parts:
                print(f"{PROG}: the input has nothing that can be spoken", file=sys.stderr)
                return EXIT_BAD_INPUT
            manifest = await self._io(Manifest.load, manifest_path(job.out_file, job.out_dir))
            todo = await self._todo(plan, manifest)
            self.progress = Progress(
                sum(p.chars for p in todo), bar=sys.stderr.isatty(), quiet=job.quiet
            )
            for title in plan.unspeakable:
                self.progress.note(f"Skipped chapter {title!r}: nothing that can be spoken")
            try:
                await self._synthesize(service, todo, manifest, rate)
            finally:
                self.progress.close()
            if not self.written and not self.skipped:
                print(f"{PROG}: the input has nothing that can be spoken", file=sys.stderr)
                return EXIT_BAD_INPUT
            if job.out_dir is not None:
                await self._io(_playlist, job.out_dir, plan, manifest)
            self._report_done()
        return 0

    def _audio_settings(self, rate: int, model_file: tuple[int, int]) -> dict[str, object]:
        """Everything besides the text that changes the audio (or the file)."""
        s = self.job.settings
        keys = ("voice", "speaker", "length_scale", "noise_scale", "noise_w_scale")
        more = ("sentence_silence", "text_cleanup", "name_emoji", "auto_punctuation")
        return {
            **{k: getattr(s, k) for k in (*keys, *more)},
            "model_file": model_file,
            "rate": rate,
            "format": self.job.fmt,
            "seed": self.job.seed,
        }

    async def _todo(self, plan: Plan, manifest: Manifest) -> list[Part]:
        todo = []
        for part in plan.parts:
            if not self.job.force and await self._io(
                manifest.done, self.job.directory, part.name, part.key
            ):
                self.skipped.append(part.name)
            else:
                todo.append(part)
        if self.skipped and not self.job.quiet:
            _LOGGER.info(
                "Already made (same text and settings), skipped: %s", ", ".join(self.skipped)
            )
        return todo

    async def _synthesize(
        self, service: SpeechService, parts: list[Part], manifest: Manifest, rate: int
    ) -> None:
        """Groups in flight on ``jobs`` workers, written in order as each is ready."""
        jobs = self.job.jobs
        running = asyncio.Semaphore(jobs)
        buffered = asyncio.Semaphore(BUFFERED_PER_JOB * jobs)
        queue: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue()

        seed = self.job.seed

        async def speak(group: Group, index: int) -> bytes:
            request = SpeechRequest(
                seed=None if seed is None else utterance_seed(seed, group.text, index)
            )
            async with running, service.open(request, door="synth") as speech:
                pieces = []
                with contextlib.suppress(NoSpeech):  # a group of symbols only: no audio
                    async for pcm in speech.audio(group.text, fixed_plan=True):
                        pieces.append(pcm)
                return b"".join(pieces)

        async def feed() -> None:
            index = 0  # the group's place in what is made: with its text, it seeds its noise
            for part in parts:
                for group in part.groups:
                    await buffered.acquire()
                    queue.put_nowait(asyncio.create_task(speak(group, index), name="synth-group"))
                    index += 1
            queue.put_nowait(None)

        feeder = asyncio.create_task(feed(), name="synth-feeder")
        try:
            for part in parts:
                await self._write_part(part, queue, buffered, manifest, rate)
        finally:
            feeder.cancel()
            left: list[asyncio.Task[Any]] = [feeder]
            while not queue.empty():
                item = queue.get_nowait()
                if item is not None:
                    item.cancel()
                    left.append(item)
            await asyncio.gather(*left, return_exceptions=True)

    async def _write_part(
        self,
        part: Part,
        queue: asyncio.Queue[asyncio.Task[bytes] | None],
        buffered: asyncio.Semaphore,
        manifest: Manifest,
        rate: int,
    ) -> None:
        directory = self.job.directory
        progress = self.progress
        assert progress is not None  # set by run() before synthesis
        audio = AudioFile(directory / part.name, self.job.fmt, rate)
        try:
            for c, groups in enumerate(part.chapters):
                for g, group in enumerate(groups):
                    task = await queue.get()
                    assert task is not None  # the feeder ends only after every group
                    pcm = await task
                    buffered.release()
                    if audio.samples and pcm:
                        gap = (
                            CHAPTER_SILENCE if g == 0 and c > 0 else self.settings.sentence_silence
                        )
                        pcm = silence(gap, rate) + pcm
                    if pcm:
                        await self._io(audio.write, pcm)
                    progress.advance(group.chars, len(pcm) / 2 / rate)
            if not audio.samples:
                audio.discard()  # never opened: nothing on disk
                progress.note(f"Skipped {part.title!r}: nothing that can be spoken")
                return
            seconds = await self._io(audio.finish)
            await self._io(manifest.record, directory, part.name, part.key, part.title, seconds)
        except BaseException:
            await self._settle_io()
            await asyncio.to_thread(audio.discard)
            raise
        self.written.append(part.name)
        progress.note(f"Wrote {directory / part.name} ({seconds:.1f} s)")

    async def _io(self, func: Callable[..., T], *args: Any) -> T:
        """A blocking file step on a thread; if we are cancelled, it still ends before
        the file is discarded."""
        future = asyncio.get_running_loop().run_in_executor(None, func, *args)
        self._pending_io = future
        return await asyncio.shield(future)

    async def _settle_io(self) -> None:
        pending = self._pending_io
        if pending is not None and not pending.done():
            await asyncio.wait([pending])

    def _report_done(self) -> None:
        if self.job.quiet or self.progress is None:
            return
        where = self.job.out_file or self.job.out_dir
        if not self.written:
            _LOGGER.info("Nothing to do: every file in %s is already made (--force redoes)", where)
            return
        made = f"{len(self.written)} file(s) made"
        if self.skipped:
            made += f", {len(self.skipped)} already made"
        _LOGGER.info("Done: %s in %s; %s", made, where, self.progress.summary())

    def report_interrupted(self) -> None:
        done = ", ".join(self.written) or "none"
        print(
            f"{PROG}: interrupted; finished this run: {done}"
            + (f" (and {len(self.skipped)} from before)" if self.skipped else "")
            + "; nothing partial was kept. Run the same command again to go on.",
            file=sys.stderr,
        )


def _playlist(directory: Path, plan: Plan, manifest: Manifest) -> None:
    """Every file of the book that exists whole (not the chapters with nothing to say)."""
    entries = [
        (p.name, p.title, manifest.seconds(p.name))
        for p in plan.parts
        if manifest.done(directory, p.name, p.key)
    ]
    write_playlist(directory, entries)


def _configure_logging(settings: Settings) -> None:
    """Our own lines at INFO; the service's per-request lines only with --debug."""
    logging.basicConfig(
        level=logging.DEBUG if settings.debug else logging.WARNING,
        format=settings.log_format,
        stream=sys.stderr,
    )
    _LOGGER.setLevel(logging.DEBUG if settings.debug else logging.INFO)
