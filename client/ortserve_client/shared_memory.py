"""Input tensors through POSIX shared memory, for a client on the server's host.

The server's system shared memory extension (Triton's) reads an input from a registered
region instead of the request, so a large tensor costs the request a few hundred bytes:

    with SharedMemoryRegion("images", 64 << 20) as region, InferenceClient(target) as client:
        client.register_shared_memory(region)
        image = region.put(batch)                  # one copy into the region; a reference back
        result = client.infer("resnet", {"input": image})
        client.unregister_shared_memory(region.name)

`put` lays tensors out one after another (64-byte aligned) until `reset`; a reference stays
valid until its bytes are overwritten, so do not `reset` or overwrite while a request that
names them is in flight. An output can be asked into the region too: pass
`region.output("y", byte_size)` among `outputs`; the result's array for it is then a read-only
view of the region (copy it before the region is reused). Numeric outputs only: a BYTES
output's length is not known in advance. The region is a `multiprocessing.shared_memory`
object that this process creates and, on `close`, unlinks; unregister it from the server first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from ortserve_client.codec import encode_tensor
from ortserve_client.dtypes import numpy_of

_ALIGN = 64


@dataclass(frozen=True, slots=True)
class SharedTensor:
    """An input whose bytes lie in a registered region: pass it where an array would go."""

    region: str
    """The region's registered name."""
    offset: int
    """Where the tensor starts, in bytes from the region's start."""
    byte_size: int
    datatype: str
    """The protocol's datatype name, e.g. "FP32"."""
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SharedOutput:
    """An output the server is to write into a registered region: pass it among `outputs`."""

    name: str
    """The model output's name."""
    region: str
    offset: int
    byte_size: int
    memory: SharedMemoryRegion = field(repr=False, compare=False)
    """Where the result's view of the output comes from."""

    def read(self, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
        """The output as the server wrote it: a read-only view of the region."""
        if datatype == "BYTES":
            raise ValueError(
                f"output {self.name!r}: BYTES outputs cannot come back through shared memory with this "
                "client (their length is unknown in advance); request them in the response"
            )
        array = self.memory.view(SharedTensor(self.region, self.offset, self.byte_size, datatype, shape))
        array.flags.writeable = False
        return array


class SharedMemoryRegion:
    """A POSIX shared memory object this process owns, to be registered with a server by `name`."""

    def __init__(self, name: str, byte_size: int) -> None:
        if byte_size <= 0:
            raise ValueError(f"byte_size must be positive, got {byte_size}")
        self.name = name
        """The name the server knows the region by (SystemSharedMemoryRegister's name)."""
        self.byte_size = byte_size
        # Imported here: multiprocessing's import registers modules a plain client never needs.
        from multiprocessing import shared_memory

        self._shm = shared_memory.SharedMemory(create=True, size=byte_size)
        buf = self._shm.buf
        assert buf is not None  # None only after close()
        self._buf: memoryview = buf
        self.key = "/" + self._shm.name
        """The object's shm_open name, which the server maps."""
        self._next = 0

    def put(self, value: Any, offset: int | None = None) -> SharedTensor:
        """Copy a tensor into the region (at `offset`, or after the last one) and return its reference."""
        datatype, shape, data = encode_tensor("shared memory input", value)
        start = self._next if offset is None else offset
        end = start + len(data)
        if start < 0 or end > self.byte_size:
            raise ValueError(
                f"a {len(data)}-byte tensor at offset {start} does not fit region {self.name!r} of "
                f"{self.byte_size} bytes (reset() to reuse it from the start, or make it larger)"
            )
        self._buf[start:end] = data
        if offset is None:
            self._next = -(-end // _ALIGN) * _ALIGN
        return SharedTensor(self.name, start, len(data), datatype, shape)

    def output(self, name: str, byte_size: int, offset: int | None = None) -> SharedOutput:
        """Room for output `name` (at `offset`, or after the last tensor): pass it among `outputs`."""
        start = self._next if offset is None else offset
        end = start + byte_size
        if byte_size <= 0 or start < 0 or end > self.byte_size:
            raise ValueError(
                f"{byte_size} bytes for output {name!r} at offset {start} do not fit region {self.name!r} "
                f"of {self.byte_size} bytes"
            )
        if offset is None:
            self._next = -(-end // _ALIGN) * _ALIGN
        return SharedOutput(name, self.name, start, byte_size, self)

    def view(self, tensor: SharedTensor) -> np.ndarray:
        """The tensor's bytes in the region as an array (no copy; not for BYTES tensors)."""
        return np.ndarray(tensor.shape, numpy_of(tensor.datatype), buffer=self._buf, offset=tensor.offset)

    def reset(self) -> None:
        """Let `put` start again from the region's start (earlier references become stale)."""
        self._next = 0

    def close(self) -> None:
        """Release and unlink the object (unregister it from the server first)."""
        self._buf.release()
        self._shm.close()
        self._shm.unlink()

    def __enter__(self) -> SharedMemoryRegion:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
