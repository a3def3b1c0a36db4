"""Finding a voice's split: in the cache by the model's sha256, else by analysing it.

The analysis (`build`, onnx) is imported only on a miss: a server whose voices are
cached, or split in a child process, never loads onnx (~11 MB resident).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .cache import SplitModel, fallback_cache_dir, read_cache, sha256

_LOGGER = logging.getLogger(__name__)


def split_voice_model(model_path: Path, cache_dir: Path) -> SplitModel | None:
    """Return the cached frontend/decoder split of ``model_path``, computing it if needed.

    Returns None when no seam is recognised; that verdict is cached too, so the (slow)
    analysis of an unsplittable voice is not repeated on every load. A cache dir that
    cannot be written (read-only, full, a file in the way) costs a warning, never the
    voice: the split goes to this user's temp folder, or the voice is used whole.
    """
    digest = sha256(model_path)
    fallback = fallback_cache_dir()
    for directory in dict.fromkeys((cache_dir, fallback)):
        try:
            return _split_into(model_path, directory, digest)
        except OSError as err:
            then = f"using {fallback}" if directory != fallback else "using the voice whole"
            _LOGGER.warning(
                "Cannot write the split of %s to %s (%s); %s",
                model_path.name,
                directory,
                err.strerror or err,
                then,
            )
    return None


def cached_verdict(model_path: Path, cache_dir: Path) -> bool | None:
    """What `split_voice_model` would find in ``cache_dir`` without splitting: True (a
    split), False (a cached "no seam"), None (nothing usable: it would split, or look in
    the fallback). Reads and hashes files only, so a caller can tell whether a split is
    needed at all."""
    digest = sha256(model_path)
    hit, split = read_cache(cache_dir / digest[:16], digest)
    return (split is not None) if hit else None


def _split_into(model_path: Path, cache_dir: Path, digest: str) -> SplitModel | None:
    entry_dir = cache_dir / digest[:16]
    hit, cached = read_cache(entry_dir, digest)
    if hit:
        return cached
    from .build import split_entry  # onnx only on a miss

    return split_entry(model_path, entry_dir, digest)
