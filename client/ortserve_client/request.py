"""The sans-IO request builder: numpy inputs -> ModelInferRequest, shared by both clients.

An input's InferInputTensor (name, datatype, shape) is built once per distinct triple and
copied into each request (protobuf copies it in; the template is never changed): cheaper
than filling a new one by keyword on every call, which is most of the builder's time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ortserve_client.codec import ParameterValue, encode_tensor, set_parameters
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.shared_memory import SharedOutput, SharedTensor

_Tensor = pb.ModelInferRequest.InferInputTensor
_TEMPLATES: dict[tuple[str, str, tuple[int, ...]], pb.ModelInferRequest.InferInputTensor] = {}
_TEMPLATES_MAX = 1024  # distinct (name, datatype, shape) kept; beyond it the table starts over


def input_tensor(name: str, datatype: str, shape: tuple[int, ...]) -> pb.ModelInferRequest.InferInputTensor:
    """The shared, never modified InferInputTensor of an input (copy it into a request)."""
    key = (name, datatype, shape)
    tensor = _TEMPLATES.get(key)
    if tensor is None:
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        tensor = _TEMPLATES[key] = _Tensor(name=name, datatype=datatype, shape=shape)
    return tensor


@dataclass(frozen=True, slots=True)
class InferRequest:
    """One inference request, for `infer_stream` (the arguments of `infer`, as a value)."""

    model: str
    """Model name."""
    inputs: Mapping[str, Any]
    """Input name -> numpy array (or anything `np.asarray` accepts, or a shared memory SharedTensor)."""
    outputs: Iterable[str | SharedOutput] | None = None
    """Outputs to return (None: every output of the model); a SharedOutput is written into its region."""
    version: str | int | None = None
    """Model version (None: the version the server's policy serves)."""
    request_id: str | None = None
    """Echoed in the result; `infer_stream` numbers requests that have none."""
    priority: int | None = None
    """Triton's request priority (1 is the highest; None: the model's default)."""
    parameters: Mapping[str, ParameterValue] | None = None
    """Extra request parameters, e.g. {"timeout": microseconds} for the server's queue timeout."""


def build_infer_request(
    model: str,
    inputs: Mapping[str, Any],
    *,
    outputs: Iterable[str | SharedOutput] | None = None,
    version: str | int | None = None,
    request_id: str | None = None,
    priority: int | None = None,
    parameters: Mapping[str, ParameterValue] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying every input in `raw_input_contents`, or named by a SharedTensor."""
    request = pb.ModelInferRequest(model_name=model)
    if version is not None:
        request.model_version = str(version)
    if request_id:
        request.id = request_id
    add = request.inputs.append
    raw = request.raw_input_contents.append
    for name, value in inputs.items():
        if isinstance(value, SharedTensor):  # in a registered region: named, not sent
            tensor = request.inputs.add()
            tensor.CopyFrom(input_tensor(name, value.datatype, value.shape))
            tensor.parameters["shared_memory_region"].string_param = value.region
            tensor.parameters["shared_memory_byte_size"].int64_param = value.byte_size
            tensor.parameters["shared_memory_offset"].int64_param = value.offset
            continue
        datatype, shape, data = encode_tensor(name, value)
        add(input_tensor(name, datatype, shape))
        raw(data)
    if outputs is not None:
        if isinstance(outputs, str):
            raise TypeError("outputs must be a list of output names, not one string")
        for item in outputs:
            if isinstance(item, SharedOutput):  # written into a registered region, not sent back
                wanted = request.outputs.add(name=item.name)
                wanted.parameters["shared_memory_region"].string_param = item.region
                wanted.parameters["shared_memory_byte_size"].int64_param = item.byte_size
                wanted.parameters["shared_memory_offset"].int64_param = item.offset
            else:
                request.outputs.add(name=item)
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(f"priority must be a non-negative int, got {priority!r}")
        request.parameters["priority"].uint64_param = priority
    if parameters:
        set_parameters(request.parameters, parameters)
    return request


def build_from(request: InferRequest, default_id: str = "") -> pb.ModelInferRequest:
    """The ModelInferRequest of an `InferRequest`; `default_id` stands in for a missing id."""
    return build_infer_request(
        request.model,
        request.inputs,
        outputs=request.outputs,
        version=request.version,
        request_id=request.request_id or default_id,
        priority=request.priority,
        parameters=request.parameters,
    )


def version_str(version: str | int | None) -> str:
    """The wire form of an optional model version ("" asks for the server's default)."""
    return "" if version is None else str(version)


def shared_outputs(outputs: Iterable[str | SharedOutput] | None) -> dict[str, SharedOutput] | None:
    """The outputs asked into shared memory, by name (None when there are none: the common case)."""
    if outputs is None or isinstance(outputs, str):
        return None
    found = {o.name: o for o in outputs if isinstance(o, SharedOutput)}
    return found or None
