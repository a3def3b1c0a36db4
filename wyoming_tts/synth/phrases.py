"""Finished sentences' audio, kept for the next time the same words are asked for.

An automation announces the same sentence ("The washing machine is done.") again and
again; its audio is answered from memory at once instead of being synthesized anew.
Keys hold everything that changes the samples, so a hit sounds exactly like the miss
that filled it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

#: One entry may take at most this share of the cache, so one long sentence never
#: empties it of many short announcements.
MAX_ENTRY_SHARE = 0.25


class PhraseCache:
    """A least-recently-used map of sentence keys to 16-bit PCM, bounded in bytes.

    Used only on the event loop, so it needs no lock.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()

    def get(self, key: Hashable) -> bytes | None:
        pcm = self._entries.get(key)
        if pcm is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return pcm

    def put(self, key: Hashable, pcm: bytes) -> None:
        if not pcm or len(pcm) > self.max_bytes * MAX_ENTRY_SHARE:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._entries[key] = pcm
        self.bytes += len(pcm)
        while self.bytes > self.max_bytes:
            _key, evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)
