"""The response cache: answers to repeated requests, kept per loaded model version, LRU in bytes.

Opt-in per model (`response_cache { enable: true }` in config.pbtxt), one cache shared by every
model of the server and bounded in bytes (the `response_cache_bytes` setting), as Triton's is.

1. Key: (the loaded version's owner id, a BLAKE2b-256 digest of the request): every input's
   name, datatype, shape and bytes, in signature order, then the requested output names. The
   digest reads each tensor's buffer in place (no copy); a BYTES tensor is hashed element by
   element with its lengths. The owner id is new at every load of a version, so a reloaded
   version (new files, new config) never sees an answer of the one it replaced, and unloading a
   version drops its entries.
2. Lookup (a hit skips the queue and the model) and insert happen on the event loop thread only,
   so no lock is needed. Two identical requests that miss together both run and both insert the
   same answer; the second insert replaces the first.
3. Inserted outputs are copied once, compact and read-only: a cached answer never pins the
   batch it was sliced from, its byte count is exact, and nobody can change it later.
4. Bounded by bytes: the least recently used entries are evicted to make room; an answer larger
   than the whole cache is not kept.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias

import numpy as np

Outputs: TypeAlias = list[tuple[str, np.ndarray[Any, Any]]]
_Key: TypeAlias = tuple[int, bytes]

ENTRY_OVERHEAD_BYTES: Final = 256
"""Bytes charged per entry on top of its tensors (key, dict slot, array headers), roughly."""

_owners = itertools.count(1)


class ResponseCache:
    """One LRU of responses for the whole server, bounded in bytes (see the module docstring)."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.used_bytes = 0
        self.evictions = 0
        """Entries evicted to make room (not those dropped with their version)."""
        self._entries: OrderedDict[_Key, tuple[Outputs, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def view(self) -> CacheView:
        """The cache as one loaded model version sees it, under an owner id of its own."""
        return CacheView(self, next(_owners))

    def get(self, key: _Key) -> Outputs | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: _Key, outputs: Outputs, nbytes: int) -> bool:
        """Keep `outputs` (already private copies) under `key`; False if larger than the cache."""
        if nbytes > self.capacity_bytes:
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self.used_bytes -= old[1]
        entries = self._entries
        while entries and self.used_bytes + nbytes > self.capacity_bytes:
            _, (_, size) = entries.popitem(last=False)
            self.used_bytes -= size
            self.evictions += 1
        entries[key] = (outputs, nbytes)
        self.used_bytes += nbytes
        return True

    def drop(self, owner: int) -> None:
        """Forget every entry of one owner (its version was unloaded or replaced)."""
        stale = [key for key in self._entries if key[0] == owner]
        for key in stale:
            self.used_bytes -= self._entries.pop(key)[1]


class CacheView:
    """A loaded model version's handle on the shared cache: keys carry its owner id."""

    __slots__ = ("_cache", "owner")

    def __init__(self, cache: ResponseCache, owner: int) -> None:
        self._cache = cache
        self.owner = owner

    def key(self, inputs: Mapping[str, np.ndarray[Any, Any]], outputs: Sequence[str]) -> _Key:
        """The cache key of a checked request: its inputs (signature order) and requested outputs."""
        digest = hashlib.blake2b(digest_size=32)
        update = digest.update
        for name, array in inputs.items():
            update(f"{len(name)}:{name}|{array.dtype.str}|{array.shape}|".encode())
            if array.dtype.kind == "O":
                for item in array.reshape(-1).tolist():
                    raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
                    update(len(raw).to_bytes(8, "little"))
                    update(raw)
            elif array.flags.c_contiguous:
                update(array.data)  # the buffer itself: no copy
            else:
                update(np.ascontiguousarray(array).data)
        update(b"|outputs|")
        for name in outputs:
            update(f"{len(name)}:{name}|".encode())
        return self.owner, digest.digest()

    def get(self, key: _Key) -> Outputs | None:
        return self._cache.get(key)

    def put(self, key: _Key, outputs: Sequence[tuple[str, np.ndarray[Any, Any]]]) -> bool:
        """Keep a private, read-only copy of `outputs`; False if the answer is larger than the cache."""
        kept: Outputs = []
        nbytes = ENTRY_OVERHEAD_BYTES
        for name, array in outputs:
            copy = np.array(array, copy=True, order="C")
            copy.flags.writeable = False
            kept.append((name, copy))
            nbytes += copy.nbytes + len(name)
            if copy.dtype.kind == "O":
                nbytes += sum(len(item) for item in copy.reshape(-1).tolist() if isinstance(item, (bytes, str)))
        return self._cache.put(key, kept, nbytes)

    def clear(self) -> None:
        self._cache.drop(self.owner)
