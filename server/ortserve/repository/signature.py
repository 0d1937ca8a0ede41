"""A model version's tensor signature, and the check of a request's tensors against it.

Built from the completed model configuration; dims exclude the batch dimension when the
model batches (max_batch_size > 0), as in Triton's configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ortserve import dtypes
from ortserve.dtypes import DType
from ortserve.errors import InvalidInputError, ModelLoadError
from ortserve_client.proto import model_config_pb2 as mc

REJECT_NONFINITE_PARAMETER = "reject_nonfinite"
"""Model config parameter: "true" refuses NaN and Inf in floating-point inputs."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model declares it."""

    name: str
    dtype: DType
    dims: tuple[int, ...]
    """Dims without the batch dimension when the model batches; -1 is variable."""


def _fmt(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs of a model version and its batching limit."""

    model: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    reject_nonfinite: bool = False
    """Refuse NaN and Inf in floating-point inputs (config parameter reject_nonfinite = "true")."""
    input_names: frozenset[str] = field(init=False, repr=False, compare=False)
    output_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every request is checked against these: built once (the dataclass is frozen).
        object.__setattr__(self, "input_names", frozenset(spec.name for spec in self.inputs))
        object.__setattr__(self, "output_names", frozenset(spec.name for spec in self.outputs))

    @classmethod
    def from_config(cls, config: mc.ModelConfig) -> Signature:
        def spec(name: str, data_type: int, dims: Sequence[int]) -> TensorSpec:
            dtype = dtypes.BY_CONFIG_ENUM.get(data_type)
            if dtype is None:
                try:
                    type_name = mc.DataType.Name(data_type)
                except ValueError:  # a number outside the enum (proto3 enums are open)
                    type_name = str(data_type)
                raise ModelLoadError(
                    f"model {config.name!r} tensor {name!r}: data type {type_name} is not supported"
                )
            return TensorSpec(name, dtype, tuple(int(d) for d in dims))

        return cls(
            config.name,
            config.max_batch_size,
            tuple(spec(t.name, t.data_type, t.dims) for t in config.input),
            tuple(spec(t.name, t.data_type, t.dims) for t in config.output),
            reject_nonfinite=REJECT_NONFINITE_PARAMETER in config.parameters
            and config.parameters[REJECT_NONFINITE_PARAMETER].string_value.strip().lower() == "true",
        )

    def shape_of(self, spec: TensorSpec) -> tuple[int, ...]:
        """The full shape a request uses: -1 batch dimension first when the model batches."""
        return (-1, *spec.dims) if self.max_batch_size else spec.dims

    def describe(self, spec: TensorSpec) -> str:
        return f"{spec.dtype.name} {_fmt(self.shape_of(spec))}"

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
        """Validate a request's tensors; return them in signature order and the batch rows.

        The rows are 1 for a model that does not batch.
        """
        if inputs.keys() != self.input_names:  # the usual request names exactly the model's inputs
            unknown = [name for name in inputs if name not in self.input_names]
            if unknown:
                raise InvalidInputError(
                    f"model {self.model!r} has no input {unknown[0]!r}: its inputs are "
                    + ", ".join(f"{s.name!r} ({self.describe(s)})" for s in self.inputs)
                )
        ordered: dict[str, np.ndarray] = {}
        rows = -1
        for spec in self.inputs:
            array = inputs.get(spec.name)
            if array is None:
                raise InvalidInputError(
                    f"model {self.model!r} input {spec.name!r} is missing: expected {self.describe(spec)}"
                )
            got = dtypes.from_numpy(array.dtype)
            if got is not spec.dtype or not self._shape_fits(spec, array.shape):
                raise InvalidInputError(
                    f"model {self.model!r} input {spec.name!r}: expected {self.describe(spec)}, "
                    f"got {got.name} {_fmt(array.shape)}"
                )
            if self.max_batch_size:
                batch = array.shape[0]
                if not 1 <= batch <= self.max_batch_size:
                    raise InvalidInputError(
                        f"model {self.model!r} input {spec.name!r}: batch size {batch} is outside "
                        f"1..{self.max_batch_size} (the model's max_batch_size); split the request"
                    )
                if rows not in (-1, batch):
                    raise InvalidInputError(
                        f"model {self.model!r}: inputs disagree on the batch size ({rows} and "
                        f"{batch} for {spec.name!r}); every input needs the same first dimension"
                    )
                rows = batch
            if spec.dtype.name == "BYTES":
                _check_text(self.model, spec.name, array)
            elif self.reject_nonfinite and spec.dtype.numpy.kind == "f":
                _check_finite(self.model, spec.name, array)
            ordered[spec.name] = array
        return ordered, max(rows, 1)

    def check_outputs(self, requested: Sequence[str]) -> tuple[str, ...]:
        """The output names to return, in request order (all, in model order, if none)."""
        if not requested:
            return tuple(spec.name for spec in self.outputs)
        known = self.output_names
        for name in requested:
            if name not in known:
                raise InvalidInputError(
                    f"model {self.model!r} has no output {name!r}: its outputs are "
                    + ", ".join(repr(s.name) for s in self.outputs)
                )
        if len(set(requested)) != len(requested):
            raise InvalidInputError(f"model {self.model!r}: an output is requested twice")
        return tuple(requested)

    def _shape_fits(self, spec: TensorSpec, shape: tuple[int, ...]) -> bool:
        if self.max_batch_size:
            if not shape:
                return False
            dims = shape[1:]
        else:
            dims = shape
        wanted = spec.dims
        if dims == wanted:  # fixed dims: one tuple comparison
            return True
        if len(dims) != len(wanted):
            return False
        for want, got in zip(wanted, dims, strict=True):
            if want != -1 and want != got:
                return False
        return True


def _check_text(model: str, name: str, array: np.ndarray) -> None:
    """BYTES inputs feed ONNX string tensors, which hold text: refuse non-UTF-8 elements here.

    Checked per request, before batching: found later, in the runtime, one request's bad element
    would fail every request of its batch.
    """
    for index, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                item.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidInputError(
                    f"model {model!r} input {name!r}: BYTES element {index} is not valid UTF-8 "
                    f"({err.reason} at byte {err.start}); the model's ONNX string tensors hold text"
                ) from None


def _check_finite(model: str, name: str, array: np.ndarray) -> None:
    """For models configured with reject_nonfinite: one NaN or Inf fails its own request, not the batch."""
    finite = np.isfinite(array)
    if not finite.all():
        index = int(np.flatnonzero(~finite.reshape(-1))[0])
        raise InvalidInputError(
            f"model {model!r} input {name!r}: element {index} is {array.reshape(-1)[index]}; the model refuses "
            "NaN and Inf (config parameter reject_nonfinite)"
        )


def zero_feeds(signature: Signature, rows: int) -> dict[str, np.ndarray]:
    """Inputs of zeros (empty strings for BYTES) for a warm-up run of `rows` rows.

    Variable dims are taken as 1.
    """
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        dims = tuple(1 if d < 0 else d for d in spec.dims)
        shape = (rows, *dims) if signature.max_batch_size else dims
        if spec.dtype.name == "BYTES":
            array = np.empty(shape, dtype=object)
            array.fill(b"")
        else:
            array = np.zeros(shape, dtype=spec.dtype.numpy)
        feeds[spec.name] = array
    return feeds
