"""Warm-up samples: Triton's `model_warmup` config entries turned into input feeds.

Each `model_warmup` entry (Triton's schema) names a sample:

    model_warmup [ {
      name: "typical"  batch_size: 8  count: 2
      inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3 ] random_data: true } }
    } ]

1. `batch_size` rows (a batching model: 1..max_batch_size; a model without a batch dim: 0 or 1);
   each input's one-row data is repeated for every row, as Triton does.
2. Every model input must be given, with the model's data type and concrete dims that fit the
   model's (dims exclude the batch dim). Data: `zero_data` (zeros, empty strings for BYTES),
   `random_data` (floats uniform in [0, 1), integers 0..9, random booleans, 8 random lowercase
   letters for BYTES; seeded, so every load warms with the same data) or `input_data_file`, a
   file under `<model_dir>/warmup/` holding the raw row-major bytes of one row (BYTES: each
   element a 4-byte little-endian length, then its bytes).
3. `count` runs of the sample (0 means 1), on every instance, before the version takes traffic.

Anything wrong raises ModelLoadError naming the sample and the input: a warm-up that cannot run
fails the load, as in Triton.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

import numpy as np

from ortserve.errors import ModelLoadError
from ortserve.repository.signature import Signature, TensorSpec
from ortserve_client.proto import model_config_pb2 as mc

WARMUP_DIRECTORY: Final = "warmup"
"""Directory under the model directory that holds `input_data_file` files (Triton's rule)."""

_RANDOM_SEED: Final = 20240901


@dataclass(frozen=True, slots=True)
class WarmupSample:
    """One warm-up request, ready to run on an instance."""

    name: str
    rows: int
    """Batch rows (1 for a model without a batch dim)."""
    count: int
    """Runs per instance (>= 1)."""
    feeds: dict[str, np.ndarray[Any, Any]]


def warmup_samples(config: mc.ModelConfig, signature: Signature, model_dir: Path) -> list[WarmupSample]:
    """The config's `model_warmup` entries as samples (see the module docstring)."""
    rng = np.random.default_rng(_RANDOM_SEED)
    return [
        _sample(config.name, index, entry, signature, model_dir, rng)
        for index, entry in enumerate(config.model_warmup)
    ]


def _sample(
    model: str,
    index: int,
    entry: mc.ModelWarmup,
    signature: Signature,
    model_dir: Path,
    rng: np.random.Generator,
) -> WarmupSample:
    label = entry.name or f"#{index}"
    where = f"model '{model}' model_warmup '{label}'"
    batched = signature.max_batch_size > 0
    rows = entry.batch_size
    if batched and not 1 <= rows <= signature.max_batch_size:
        raise ModelLoadError(
            f"{where}: batch_size {rows}; expected 1 to max_batch_size {signature.max_batch_size}"
        )
    if not batched and rows > 1:
        raise ModelLoadError(f"{where}: batch_size {rows}, but the model takes no batch dim; expected 0 or 1")
    known = {spec.name for spec in signature.inputs}
    unknown = sorted(set(entry.inputs) - known)
    if unknown:
        raise ModelLoadError(f"{where}: the model has no input {unknown[0]!r}; its inputs are {sorted(known)}")
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    for spec in signature.inputs:
        given = entry.inputs.get(spec.name)
        if given is None:
            raise ModelLoadError(f"{where}: input {spec.name!r} is missing; every model input needs warm-up data")
        one = _one_row(f"{where} input {spec.name!r}", spec, given, model_dir, rng)
        feeds[spec.name] = np.repeat(one[np.newaxis], max(rows, 1), axis=0) if batched else one
    return WarmupSample(label, max(rows, 1), max(entry.count, 1), feeds)


def _one_row(
    where: str, spec: TensorSpec, given: mc.ModelWarmup.Input, model_dir: Path, rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    wanted = spec.dtype.config_enum
    if given.data_type != wanted:
        raise ModelLoadError(
            f"{where}: data_type {_type_name(given.data_type)}; expected the model's {_type_name(wanted)}"
        )
    dims = tuple(int(d) for d in given.dims)
    fits = len(dims) == len(spec.dims) and all(
        d >= 0 and (w == -1 or w == d) for d, w in zip(dims, spec.dims, strict=True)
    )
    if not fits:
        raise ModelLoadError(
            f"{where}: dims {list(dims)}; expected concrete dims fitting the model's {list(spec.dims)} "
            "(without the batch dim)"
        )
    count = math.prod(dims)
    is_text = spec.dtype.name == "BYTES"
    choice = given.WhichOneof("input_data_type")
    if choice == "random_data":
        return _random(spec, dims, rng)
    if choice == "input_data_file":
        raw = _read_data_file(where, given.input_data_file, model_dir)
        if is_text:
            return np.array(_split_bytes(where, raw, count), dtype=object).reshape(dims)
        dtype = spec.dtype.numpy
        if len(raw) != count * dtype.itemsize:
            raise ModelLoadError(
                f"{where}: input_data_file {given.input_data_file!r} holds {len(raw)} bytes; expected "
                f"{count * dtype.itemsize} ({count} {spec.dtype.name} elements of dims {list(dims)})"
            )
        return np.frombuffer(raw, dtype=dtype).reshape(dims).copy()
    # zero_data, or nothing chosen (Triton's default data is zeros too)
    if is_text:
        array = np.empty(dims, dtype=object)
        array.fill(b"")
        return array
    return np.zeros(dims, dtype=spec.dtype.numpy)


def _random(spec: TensorSpec, dims: tuple[int, ...], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    dtype = spec.dtype.numpy
    if spec.dtype.name == "BYTES":
        letters = rng.integers(ord("a"), ord("z") + 1, size=(*dims, 8), dtype=np.uint8)
        flat = [bytes(row) for row in letters.reshape(-1, 8)]
        return np.array(flat, dtype=object).reshape(dims)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=dims).astype(bool)
    if dtype.kind == "f":
        return rng.random(size=dims).astype(dtype)
    return rng.integers(0, 10, size=dims).astype(dtype)


def _read_data_file(where: str, name: str, model_dir: Path) -> bytes:
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or any(part in ("..", "") for part in relative.parts) or "\\" in name:
        raise ModelLoadError(
            f"{where}: input_data_file {name!r} is not a relative path inside {WARMUP_DIRECTORY}/; "
            'expected a file name such as "input0.bin"'
        )
    path = model_dir / WARMUP_DIRECTORY / relative
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{where}: cannot read input_data_file {path}: {exc}") from exc


def _split_bytes(where: str, raw: bytes, count: int) -> list[bytes]:
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ModelLoadError(f"{where}: input_data_file ends inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ModelLoadError(f"{where}: input_data_file ends inside element {len(items)}")
        items.append(raw[offset : offset + length])
        offset += length
    if len(items) != count:
        raise ModelLoadError(f"{where}: input_data_file holds {len(items)} BYTES elements; expected {count}")
    return items


def _type_name(value: int) -> str:
    try:
        return mc.DataType.Name(value)
    except ValueError:
        return f"data_type {value}"
