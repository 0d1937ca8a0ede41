"""InferResult and the sans-IO response decoder shared by both clients."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np

from ortserve_client.codec import Array, ParameterValue, decode_contents, decode_raw, get_parameters
from ortserve_client.dtypes import NUMPY_OF
from ortserve_client.errors import InferenceServerError
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.shared_memory import SharedOutput

_FIXED = {name: dtype for name, dtype in NUMPY_OF.items() if name != "BYTES"}


class InferResult(Mapping[str, Array]):
    """The outputs of one inference, by name, in the order the server returned them.

    Arrays are read-only numpy views of the response bytes (no copy): call `.copy()` on
    one to write into it. BYTES outputs are object arrays of `bytes`.
    """

    __slots__ = ("error", "_outputs", "_datatypes", "_response")

    def __init__(
        self,
        response: pb.ModelInferResponse,
        outputs: dict[str, Array],
        datatypes: dict[str, str],
        error: str | None = None,
    ) -> None:
        self.error: str | None = error
        """In `infer_stream` only: why this request failed (None when it succeeded)."""
        self._outputs = outputs
        self._datatypes = datatypes
        self._response = response

    @property
    def model_name(self) -> str:
        """The model that answered."""
        return self._response.model_name

    @property
    def model_version(self) -> str:
        """Its version."""
        return self._response.model_version

    @property
    def id(self) -> str:
        """The request id, echoed."""
        return self._response.id

    def __getitem__(self, name: str) -> Array:
        return self._outputs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    def as_numpy(self, name: str) -> Array | None:
        """The output `name`, or None when the response has none of that name (as tritonclient)."""
        return self._outputs.get(name)

    def datatype(self, name: str) -> str:
        """The KServe datatype string of output `name` ("FP32", "BYTES", ...)."""
        return self._datatypes[name]

    @property
    def parameters(self) -> dict[str, ParameterValue | bytes]:
        """The response's parameters as plain values."""
        return get_parameters(self._response.parameters)

    @property
    def response(self) -> pb.ModelInferResponse:
        """The ModelInferResponse message itself."""
        return self._response

    def raise_for_error(self) -> InferResult:
        """Raise InferenceServerError if this (streamed) request failed; return self otherwise."""
        if self.error is not None:
            raise InferenceServerError(f"request {self.id!r}: {self.error}")
        return self

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}: {self._datatypes[k]} {list(v.shape)}" for k, v in self._outputs.items())
        failed = f", error={self.error!r}" if self.error is not None else ""
        where = f"model={self.model_name!r}, version={self.model_version!r}, id={self.id!r}"
        return f"InferResult({where}, {{{shown}}}{failed})"


def decode_infer_response(
    response: pb.ModelInferResponse, shared: Mapping[str, SharedOutput] | None = None
) -> InferResult:
    """Decode every output of a ModelInferResponse (raw contents, or typed contents if none).

    An output in `shared` was written into its shared memory region: its array is a view of
    the region. Any other output with an empty raw entry but elements is one the server wrote
    into a region this call did not name (a stream's): it is left out, as tritonclient does.
    """
    outputs: dict[str, Array] = {}
    datatypes: dict[str, str] = {}
    raw = response.raw_output_contents
    tensors = response.outputs
    if raw:
        if len(raw) != len(tensors):
            raise ValueError(f"the response has {len(tensors)} outputs but {len(raw)} raw_output_contents")
        # Each element read from a repeated bytes field is a new bytes object: read each once.
        for tensor, data in zip(tensors, raw, strict=True):
            name = tensor.name
            datatype = tensor.datatype
            if not data and math.prod(tensor.shape) != 0:  # elements, yet no bytes: in shared memory
                if shared and name in shared:
                    outputs[name] = shared[name].read(datatype, tuple(tensor.shape))
                    datatypes[name] = datatype
                continue
            dtype = _FIXED.get(datatype)
            array = None
            if dtype is not None:  # the common case inline: a read-only view of the bytes
                try:
                    array = np.ndarray(tensor.shape, dtype, data)
                except (TypeError, ValueError):  # negative dims, too few bytes: decode_raw says what
                    pass
            if array is None or array.nbytes != len(data):  # BYTES, unknown datatype, bad size
                array = decode_raw(name, datatype, tensor.shape, data)
            outputs[name] = array
            datatypes[name] = datatype
    else:
        for tensor in tensors:
            name = tensor.name
            outputs[name] = decode_contents(name, tensor.datatype, tensor.shape, tensor.contents)
            datatypes[name] = tensor.datatype
    return InferResult(response, outputs, datatypes)


def decode_stream_response(message: pb.ModelStreamInferResponse) -> InferResult:
    """One item of ModelStreamInfer: a result, or a failed request's id and error message."""
    if message.error_message:
        return InferResult(message.infer_response, {}, {}, message.error_message)
    return decode_infer_response(message.infer_response)

