"""Plain, typed values of the metadata and repository answers (decoded from their messages)."""

from __future__ import annotations

from dataclasses import dataclass

from ortserve_client.proto import grpc_service_pb2 as pb


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """An input or output of a model."""

    name: str
    datatype: str
    """KServe datatype string, e.g. "FP32"."""
    shape: tuple[int, ...]
    """-1 marks a variable dimension (the batch dimension of a batchable model)."""


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]
    """Triton protocol extensions the server implements, e.g. "model_repository"."""

    @classmethod
    def from_proto(cls, message: pb.ServerMetadataResponse) -> ServerMetadata:
        return cls(message.name, message.version, tuple(message.extensions))


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    """The versions ready to serve."""
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    @classmethod
    def from_proto(cls, message: pb.ModelMetadataResponse) -> ModelMetadata:
        def tensors(items: object) -> tuple[TensorMetadata, ...]:
            return tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in items)  # type: ignore[attr-defined]

        return cls(
            message.name, tuple(message.versions), message.platform, tensors(message.inputs), tensors(message.outputs)
        )


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    """One row of the repository index."""

    name: str
    version: str
    state: str
    """READY, LOADING, UNLOADING or UNAVAILABLE."""
    reason: str
    """Why it is not ready, if it is not."""

    @classmethod
    def from_proto(cls, message: pb.RepositoryIndexResponse.ModelIndex) -> RepositoryModel:
        return cls(message.name, message.version, message.state, message.reason)
