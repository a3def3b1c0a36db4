"""The on-disk cache of split voices: one directory per model, keyed by its sha256.

Entries are written file by file with atomic renames and ``split.json`` last, so a
concurrent or interrupted loader sees either a complete entry or a miss, never a part.
``split.json`` also holds each part's sha256, checked on every read: a part damaged on
disk (a bad sector, a half-restored backup) is a miss and is split again, never a
voice that silently speaks different audio.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Bump when the split logic or the cache layout changes, so stale caches are ignored.
#: 5: each part's sha256 is recorded and checked. 6: a multi-speaker voice's seam carries
#: the speaker embedding alone (its projections move to the decoder side); whole-range
#: slices on the frame axis no longer hide a flow/vocoder seam. 7: parts are written with
#: their convolutions 2-D (`conv2d`).
CACHE_VERSION = 7

_LOGGER = logging.getLogger(__name__)

META_FILE = "split.json"
FRONTEND_FILE = "frontend.onnx"
DECODER_FILE = "decoder.onnx"
FLOW_FILE = "flow.onnx"
VOCODER_FILE = "vocoder.onnx"


@dataclass(frozen=True)
class VocoderStage:
    """A later upsampling stage of the vocoder, run on its own over frame sub-windows."""

    path: Path
    input_name: str
    rate: int
    """Samples per frame of its input."""
    margin: int
    """Frames of context it needs on each side."""


@dataclass(frozen=True)
class VocoderSplit:
    """The decoder cut between flow and vocoder, with each part's reach in frames.

    ``vocoder_path`` computes the vocoder up to its first upsampling stage, or all of it
    when ``tail`` is empty; the ``tail`` stages then follow one after another.
    """

    flow_path: Path
    vocoder_path: Path
    seam_name: str
    flow_margin: int
    vocoder_margin: int
    tail: tuple[VocoderStage, ...] = ()
    tail_context: int | None = None
    """Frames of the first stage's output the later stages together reach on each side
    (None: not known); they need not run over all of a window's context."""


@dataclass(frozen=True)
class SplitModel:
    """Paths of the cached halves and the names of the tensors crossing the seam."""

    frontend_path: Path
    decoder_path: Path
    z_name: str
    mask_name: str
    g_name: str | None
    vocoder: VocoderSplit | None = None

    @property
    def parts(self) -> list[Path]:
        """Every model file of the split."""
        paths = [self.frontend_path, self.decoder_path]
        if self.vocoder is not None:
            v = self.vocoder
            paths += [v.flow_path, v.vocoder_path, *(t.path for t in v.tail)]
        return paths


def stage_file(index: int) -> str:
    return f"vocoder{index}.onnx"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_cache(entry_dir: Path, digest: str) -> tuple[bool, SplitModel | None]:
    """(hit, split): a hit with None is a cached "no seam"; damaged entries are misses."""
    try:
        meta = json.loads((entry_dir / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
        return False, None
    if meta.get("sha256") != digest:
        return False, None
    z_name, mask_name, g_name = meta.get("z_name"), meta.get("mask_name"), meta.get("g_name")
    if z_name is None:
        return True, None
    frontend_path = entry_dir / FRONTEND_FILE
    decoder_path = entry_dir / DECODER_FILE
    if not (
        isinstance(z_name, str)
        and isinstance(mask_name, str)
        and (g_name is None or isinstance(g_name, str))
        and frontend_path.is_file()
        and decoder_path.is_file()
    ):
        return False, None
    vocoder: VocoderSplit | None = None
    spec = meta.get("vocoder")
    if spec is not None:
        vocoder = _read_vocoder(entry_dir, spec)
        if vocoder is None:
            return False, None
    split = SplitModel(frontend_path, decoder_path, z_name, mask_name, g_name, vocoder)
    recorded = meta.get("parts")
    if not isinstance(recorded, dict) or any(
        recorded.get(path.name) != sha256(path) for path in split.parts
    ):
        _LOGGER.warning("Cached split in %s is damaged; splitting the voice again", entry_dir)
        return False, None
    return True, split


def _read_vocoder(entry_dir: Path, spec: object) -> VocoderSplit | None:
    """The flow/vocoder cut ``spec`` describes, or None if it or a file is damaged."""
    if not isinstance(spec, dict):
        return None
    flow_path, vocoder_path = entry_dir / FLOW_FILE, entry_dir / VOCODER_FILE
    try:
        tail = tuple(
            VocoderStage(
                entry_dir / stage_file(i),
                str(stage["input"]),
                int(stage["rate"]),
                int(stage["margin"]),
            )
            for i, stage in enumerate(spec["tail"], start=1)
        )
        context = spec.get("tail_context")
        vocoder = VocoderSplit(
            flow_path,
            vocoder_path,
            str(spec["seam_name"]),
            int(spec["flow_margin"]),
            int(spec["vocoder_margin"]),
            tail,
            None if context is None else int(context),
        )
    except (TypeError, KeyError, ValueError):
        return None
    paths = [flow_path, vocoder_path, *(t.path for t in tail)]
    return vocoder if all(path.is_file() for path in paths) else None


def write_meta(entry_dir: Path, digest: str, split: SplitModel | None) -> None:
    """Write ``split.json``, the entry's marker: only once all its model files are in place."""
    meta: dict[str, object] = {"version": CACHE_VERSION, "sha256": digest}
    if split is not None:
        meta.update(z_name=split.z_name, mask_name=split.mask_name, g_name=split.g_name)
        meta["parts"] = {path.name: sha256(path) for path in split.parts}
    if split is not None and split.vocoder is not None:
        vocoder = split.vocoder
        meta["vocoder"] = {
            "seam_name": vocoder.seam_name,
            "flow_margin": vocoder.flow_margin,
            "vocoder_margin": vocoder.vocoder_margin,
            "tail": [
                {"input": t.input_name, "rate": t.rate, "margin": t.margin} for t in vocoder.tail
            ],
            "tail_context": vocoder.tail_context,
        }
    data = json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")
    write_atomic(entry_dir / META_FILE, data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file + rename so concurrent loaders never see a partial file.

    The data is on disk before the rename, so a power cut leaves the old file or the
    whole new one, never a renamed file of zeros.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fallback_cache_dir() -> Path:
    """Where splits go when the configured cache dir cannot be written: this user's temp."""
    return Path(tempfile.gettempdir()) / f"wyoming-tts-cache-{os.getuid()}"
