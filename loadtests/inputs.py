"""Request inputs of a load test: generated from a model's metadata with a seed, or read from a .npz file.

Generated: every input gets its metadata's shape, a leading -1 (the batch dimension) replaced by
`batch_size` and any other -1 by `dim_size`, and random values of its datatype drawn from a
generator seeded by (seed, model name): floats uniform in [0, 1), integers in [0, 16) (safe as
indices into small tables), booleans, short ASCII words for BYTES. The same seed gives the same
requests on every worker and every run.

From a file: a `.npz` whose arrays are named after the model's inputs (a model with one input
may use any single array). For a batchable model (leading -1) the rows are cut into requests of
`batch_size` rows; otherwise the file is one request. Names, datatypes and fixed dimensions are
checked against the metadata before any load is sent.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve_client import ModelMetadata, TensorMetadata
from ortserve_client.dtypes import NUMPY_OF

Inputs = dict[str, np.ndarray[Any, Any]]


class InputError(ValueError):
    """The inputs cannot be made for a model; the message names the model, the input and the reason."""


def resolve_shape(shape: Sequence[int], batch_size: int, dim_size: int) -> tuple[int, ...]:
    """The metadata's shape with a leading -1 set to batch_size and every other -1 to dim_size."""
    return tuple((batch_size if i == 0 else dim_size) if d < 0 else d for i, d in enumerate(shape))


def _random(
    tensor: TensorMetadata, shape: tuple[int, ...], rng: np.random.Generator, model: str
) -> np.ndarray[Any, Any]:
    dtype = NUMPY_OF.get(tensor.datatype)
    if dtype is None:
        raise InputError(
            f"model {model!r} input {tensor.name!r}: cannot generate datatype {tensor.datatype} "
            f"(supported: {', '.join(NUMPY_OF)}); give the inputs in a .npz file instead"
        )
    if tensor.datatype == "BYTES":
        words = rng.integers(0, 10_000, size=shape)
        return np.array([f"w{n}".encode() for n in words.ravel()], dtype=object).reshape(shape)
    if tensor.datatype == "BOOL":
        return rng.random(shape) < 0.5
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 16, size=shape).astype(dtype)


def model_seed(seed: int, model: str) -> np.random.SeedSequence:
    """A seed of its own for each model, stable across processes (unlike hash())."""
    return np.random.SeedSequence([seed, zlib.crc32(model.encode())])


def generate(
    metadata: ModelMetadata, *, batch_size: int = 1, dim_size: int = 8, seed: int = 0, count: int = 8
) -> list[Inputs]:
    """`count` distinct requests for the model, reproducible from the seed."""
    if batch_size < 1 or dim_size < 1 or count < 1:
        raise InputError(f"batch_size, dim_size and count must be >= 1, got {batch_size}, {dim_size}, {count}")
    rng = np.random.default_rng(model_seed(seed, metadata.name))
    return [
        {t.name: _random(t, resolve_shape(t.shape, batch_size, dim_size), rng, metadata.name) for t in metadata.inputs}
        for _ in range(count)
    ]


def _check(model: str, tensor: TensorMetadata, array: np.ndarray[Any, Any], source: str) -> np.ndarray[Any, Any]:
    expected = NUMPY_OF.get(tensor.datatype)
    where = f"model {model!r} input {tensor.name!r} from {source}"
    if tensor.datatype == "BYTES":
        if array.dtype.kind not in "OSU":
            raise InputError(f"{where}: expected BYTES (str, bytes or object), got {array.dtype}")
    elif expected is None or array.dtype != expected:
        raise InputError(f"{where}: expected {tensor.datatype} ({expected}), got {array.dtype}")
    if array.ndim != len(tensor.shape) or any(
        d >= 0 and d != a for d, a in zip(tensor.shape, array.shape, strict=True)
    ):
        raise InputError(f"{where}: expected shape {list(tensor.shape)}, got {list(array.shape)}")
    return array


def from_npz(metadata: ModelMetadata, path: str | Path, *, batch_size: int = 1) -> list[Inputs]:
    """The requests held by a .npz file (see the module docstring)."""
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays: Mapping[str, np.ndarray[Any, Any]] = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"model {metadata.name!r}: cannot read {source}: {exc}") from None
    names = [t.name for t in metadata.inputs]
    if len(names) == 1 and len(arrays) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise InputError(f"model {metadata.name!r}: {source} lacks input(s) {missing}; it holds {sorted(arrays)}")
    checked = {t.name: _check(metadata.name, t, arrays[t.name], source) for t in metadata.inputs}
    batchable = all(t.shape and t.shape[0] < 0 for t in metadata.inputs)
    if not batchable:
        return [checked]
    rows = {a.shape[0] for a in checked.values()}
    if len(rows) != 1:
        raise InputError(f"model {metadata.name!r}: the arrays of {source} differ in rows: {sorted(rows)}")
    total = rows.pop()
    if total == 0:
        raise InputError(f"model {metadata.name!r}: {source} holds no rows")
    step = max(1, min(batch_size, total))
    return [{n: a[i : i + step] for n, a in checked.items()} for i in range(0, total - step + 1, step)]


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """A model of the run and its share of the requests."""

    name: str
    weight: int = 1


def parse_models(spec: str) -> list[ModelChoice]:
    """'iris,other:3' -> iris (weight 1) and other (weight 3); '' -> []."""
    choices: list[ModelChoice] = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, weight = item.partition(":")
        try:
            value = int(weight) if weight else 1
        except ValueError:
            raise InputError(f"--models {spec!r}: the weight of {name!r} must be an integer, got {weight!r}") from None
        if not name or value < 1:
            raise InputError(f"--models {spec!r}: expected NAME[:WEIGHT] with WEIGHT >= 1, got {item!r}")
        choices.append(ModelChoice(name, value))
    return choices


def parse_npz_files(spec: str, models: Sequence[str]) -> dict[str, Path]:
    """'iris=a.npz,other=b.npz', or a bare path for every model of the run."""
    files: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        model, sep, path = item.partition("=")
        if not sep:
            files.update({m: Path(item) for m in models})
        else:
            files[model] = Path(path)
    unknown = set(files) - set(models)
    if unknown:
        raise InputError(f"--inputs-npz names model(s) not in the run: {sorted(unknown)}; the run has {list(models)}")
    return files
