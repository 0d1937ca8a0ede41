"""Triton's system shared memory extension: tensors that travel through /dev/shm, not the wire.

A client on the server's host creates a POSIX shared memory object (`shm_open`, key "/name"),
registers a region of it with SystemSharedMemoryRegister (region name, key, offset, byte size),
and then names the region in an input's or a requested output's parameters instead of sending
bytes: `shared_memory_region` (string), `shared_memory_byte_size` (int64) and optionally
`shared_memory_offset` (int64, from the region's start). What that saves is the cost of a large
tensor on the wire, which in one Python process is mostly the event loop's (two copies of every
received message in gRPC's Python layer, HTTP/2 framing, allocation): the request that names a
region is a few hundred bytes whatever the tensor's size.

1. An input in a region becomes a numpy view of the mapping (`np.frombuffer`, no copy); the
   batch's concatenation stays the one copy, and a request batched alone is read by ONNX
   Runtime straight from the client's memory.
2. An output asked into a region is copied there once, after the batch ran; the response still
   carries its name, datatype and shape, with an empty raw_output_contents entry in its place, so
   that the entries stay one per output, in order.

The client owns the memory and must not change an input region until its response arrives,
nor read an output region before (as with Triton). The server maps the whole object once per
registration, read-write, and never unlinks it. Unregistering drops the server's mapping when
the last request using it is done (numpy views keep it alive), so in-flight requests are safe.
Keys are names under /dev/shm only (no path separators), opened without following symlinks and
mapped only if they are regular objects: a client cannot make the server map (and write outputs
into) a file elsewhere. Linux only: where /dev/shm does not exist, registration fails with UNIMPLEMENTED.

Trust: a mapped object that its owner shrinks (ftruncate) faults the process that reads the lost
pages (SIGBUS), Triton's as much as this one. Each use of a region first looks the object up
(one stat of its name), so an object shrunk, removed or replaced since its registration is
refused with INVALID_ARGUMENT; one shrunk *while* a request reads it cannot be caught. The server
holds no file descriptor per region (a mapping outlives its descriptor), and at most
MAX_REGIONS regions (RESOURCE_EXHAUSTED beyond), so registrations cannot exhaust its files.
Any client with the inference scope, remote ones too, can register the regular objects in the
server host's /dev/shm and so read and write them through a model: where other software keeps
shared memory there, give that scope only to clients you trust, or serve with
`--shared-memory off` (the Kubernetes manifests do).
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

from ortserve.errors import (
    InvalidInputError,
    RegionExistsError,
    RegionNotFoundError,
    ResourceExhaustedError,
    UnsupportedError,
)

SHM_ROOT = Path("/dev/shm")
_KEY = re.compile(r"^/?[^/\x00]+$")

MAX_REGIONS = 1024
"""Regions one server holds at once (each is a mapping)."""

REGION = "shared_memory_region"
BYTE_SIZE = "shared_memory_byte_size"
OFFSET = "shared_memory_offset"


@dataclass(frozen=True, slots=True)
class Region:
    """One registered region: where it lies in which object, and its bytes."""

    name: str
    key: str
    offset: int
    byte_size: int
    data: memoryview
    """The region's bytes (writable), a slice of the object's mapping."""
    path: Path
    inode: int
    """The mapped object's inode: a different one under `path` means the object was replaced."""


class SharedMemoryRegistry:
    """The system shared memory regions registered with this server, by name.

    Registration and lookup happen on the event loop; the lock only guards the table against
    the rare call from another thread (tests, control tools).
    """

    def __init__(self, root: Path = SHM_ROOT) -> None:
        self._root = root
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> Region:
        if not name:
            raise InvalidInputError("a shared memory region needs a name: set SystemSharedMemoryRegisterRequest.name")
        if not _KEY.match(key) or key.strip("/") in (".", ".."):
            raise InvalidInputError(
                f"shared memory key {key!r} is not a POSIX shared memory name: expected '/name' as "
                "given to shm_open, without further '/'"
            )
        if byte_size <= 0:
            raise InvalidInputError(f"shared memory region {name!r}: byte_size must be positive, got {byte_size}")
        if not self._root.is_dir():
            raise UnsupportedError(f"system shared memory is not available on this server ({self._root} missing)")
        with self._lock:
            if name in self._regions:
                raise RegionExistsError(
                    f"shared memory region {name!r} is already registered; unregister it first or pick another name"
                )
        path = self._root / key.lstrip("/")
        try:
            # No symlinks: a link in /dev/shm to a file the server may write would hand a client that file.
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise InvalidInputError(
                f"shared memory region {name!r}: no shared memory object {key!r} on the server's host "
                "(create it with shm_open on this host first)"
            ) from None
        except OSError as exc:  # ELOOP for a symlink, EACCES, EISDIR, ...
            raise InvalidInputError(
                f"shared memory region {name!r}: cannot open {key!r} for reading and writing: {exc.strerror}"
            ) from None
        try:
            stat = os.fstat(fd)
            if not S_ISREG(stat.st_mode):
                raise InvalidInputError(
                    f"shared memory region {name!r}: {key!r} is not a shared memory object (a regular file "
                    "under /dev/shm)"
                )
            size = stat.st_size
            if offset + byte_size > size:
                raise InvalidInputError(
                    f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} runs past the "
                    f"end of {key!r} ({size} bytes)"
                )
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)  # the mapping keeps the object
        data = memoryview(mapping)[offset : offset + byte_size]
        region = Region(name, key, offset, byte_size, data, path, stat.st_ino)
        with self._lock:
            if name in self._regions:  # registered meanwhile by another caller
                raise RegionExistsError(f"shared memory region {name!r} is already registered")
            if len(self._regions) >= MAX_REGIONS:
                raise ResourceExhaustedError(
                    f"this server holds {MAX_REGIONS} shared memory regions already; unregister some first"
                )
            self._regions[name] = region
        return region

    def usage(self) -> tuple[int, int]:
        """(regions, bytes) registered now (for the metrics)."""
        with self._lock:
            return len(self._regions), sum(r.byte_size for r in self._regions.values())

    def unregister(self, name: str = "") -> None:
        """Forget one region (empty name: all); unknown names are no error, as in Triton."""
        with self._lock:  # a mapping stays while requests still hold views of it
            if name:
                self._regions.pop(name, None)
            else:
                self._regions.clear()

    def status(self, name: str = "") -> list[Region]:
        with self._lock:
            if not name:
                return list(self._regions.values())
            region = self._regions.get(name)
        if region is None:
            raise RegionNotFoundError(f"no shared memory region {name!r} is registered")
        return [region]

    def tensor(self, tensor: str, parameters: Mapping[str, Any]) -> memoryview:
        """The bytes an input or output names in its `shared_memory_*` parameters."""
        region_name = _param(parameters, REGION, "string_param", tensor)
        byte_size = _param(parameters, BYTE_SIZE, "int64_param", tensor)
        offset = _param(parameters, OFFSET, "int64_param", tensor) if OFFSET in parameters else 0
        region = self._regions.get(str(region_name))
        if region is None:
            raise InvalidInputError(
                f"tensor {tensor!r}: shared memory region {region_name!r} is not registered "
                "(SystemSharedMemoryRegister it first)"
            )
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InvalidInputError(
                f"tensor {tensor!r}: offset {offset} + byte_size {byte_size} do not fit shared memory "
                f"region {region.name!r} of {region.byte_size} bytes"
            )
        try:
            stat = os.stat(region.path, follow_symlinks=False)
        except OSError:
            stat = None
        if stat is None or stat.st_ino != region.inode or stat.st_size < region.offset + offset + byte_size:
            raise InvalidInputError(
                f"tensor {tensor!r}: the object {region.key!r} behind shared memory region {region.name!r} "
                "has been removed, replaced or shrunk since it was registered; unregister the region "
                "and register it again"
            )
        return region.data[offset : offset + byte_size]


def _param(parameters: Mapping[str, Any], key: str, kind: str, tensor: str) -> Any:
    value = parameters.get(key)
    if value is None:
        raise InvalidInputError(f"tensor {tensor!r}: shared memory needs the parameter {key!r}")
    if value.WhichOneof("parameter_choice") != kind:
        raise InvalidInputError(
            f"tensor {tensor!r}: parameter {key!r} must be {kind.removesuffix('_param')}, "
            f"got {value.WhichOneof('parameter_choice')}"
        )
    return getattr(value, kind)


def uses_shared_memory(parameters: Mapping[str, Any]) -> bool:
    return bool(parameters) and REGION in parameters


def output_targets(registry: SharedMemoryRegistry, requested: Iterable[Any]) -> dict[str, memoryview]:
    """Requested outputs (InferRequestedOutputTensor) that name a region: output name -> its bytes.

    Resolved before the request is queued, so that a bad region fails it before any compute.
    """
    return {o.name: registry.tensor(o.name, o.parameters) for o in requested if uses_shared_memory(o.parameters)}


def write_outputs(outputs: Iterable[tuple[str, bytes | memoryview]], targets: Mapping[str, memoryview]) -> None:
    """Copy each output's serialized bytes into its region (the one copy of a shared memory output)."""
    for name, data in outputs:
        target = targets.get(name)
        if target is None:
            continue
        if len(data) > len(target):
            raise InvalidInputError(
                f"output {name!r} needs {len(data)} bytes but its shared memory region gives "
                f"{len(target)} (shared_memory_byte_size): register a larger region"
            )
        target[: len(data)] = data
