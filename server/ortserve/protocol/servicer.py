"""InferenceServicer: the GRPCInferenceService methods, thin over the DataPlane.

Each method decodes, awaits one call into the core, and encodes; exceptions become status
codes in `status.mapped_errors`. No policy lives here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from time import monotonic_ns
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio

from ortserve.dataplane import DataPlane
from ortserve.errors import InvalidInputError, RegionNotFoundError, UnsupportedError
from ortserve.observability import ModelStats
from ortserve.protocol.codec import DEFAULT_LIMITS, DecodeLimits, decode_parameters, decode_request, encode_response
from ortserve.protocol.shared_memory import SharedMemoryRegistry, output_targets
from ortserve.protocol.status import abort_with, mapped_errors, status_of
from ortserve.protocol.wire import WireInferRequest, parse_infer_request, serialize_infer_response
from ortserve.repository import ModelVersion
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from ortserve.protocol.tracing import ObservabilityInterceptor

log = logging.getLogger("ortserve.protocol")


def _deadline_ns(context: aio.ServicerContext) -> int | None:
    remaining = context.time_remaining()
    return None if remaining is None else monotonic_ns() + int(remaining * 1e9)


def _duration(d: Any) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def _model_statistics(name: str, version: str, s: ModelStats) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
            cache_hit=_duration(s.cache_hit),
            cache_miss=_duration(s.cache_miss),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for size, b in sorted(s.batch_sizes.items())
        ],
    )


def _tensor_metadata(model: ModelVersion) -> tuple[list[Any], list[Any]]:
    sig = model.signature
    make = pb.ModelMetadataResponse.TensorMetadata
    inputs = [make(name=s.name, datatype=s.dtype.name, shape=sig.shape_of(s)) for s in sig.inputs]
    outputs = [make(name=s.name, datatype=s.dtype.name, shape=sig.shape_of(s)) for s in sig.outputs]
    return inputs, outputs


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """KServe V2 / Triton GRPCInferenceService over a DataPlane."""

    def __init__(
        self,
        dataplane: DataPlane,
        limits: DecodeLimits = DEFAULT_LIMITS,
        shared_memory: SharedMemoryRegistry | None = None,
    ) -> None:
        self._dp = dataplane
        self._limits = limits
        self._shm = shared_memory
        """System shared memory regions; None when the extension is off (--shared-memory off)."""

    @mapped_errors
    async def ServerLive(self, request: pb.ServerLiveRequest, context: aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dp.live())

    @mapped_errors
    async def ServerReady(self, request: pb.ServerReadyRequest, context: aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.ready())

    @mapped_errors
    async def ModelReady(self, request: pb.ModelReadyRequest, context: aio.ServicerContext) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._dp.model_ready(request.name, request.version))

    @mapped_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        name, version, extensions = self._dp.server_metadata()
        if self._shm is not None:
            extensions = (*extensions, "system_shared_memory")
        return pb.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @mapped_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._dp.model(request.name, request.version)
        inputs, outputs = _tensor_metadata(model)
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._dp.model_versions(model.name),
            platform=model.config.platform,
            inputs=inputs,
            outputs=outputs,
        )

    @mapped_errors
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: aio.ServicerContext) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._dp.model(request.name, request.version).config)

    @mapped_errors
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        rows = self._dp.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(model_stats=[_model_statistics(*row) for row in rows])

    @mapped_errors
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        make = pb.RepositoryIndexResponse.ModelIndex
        rows = self._dp.repository_index(request.ready)
        return pb.RepositoryIndexResponse(
            models=[make(name=r.name, version=r.version, state=r.state, reason=r.reason) for r in rows]
        )

    @mapped_errors
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._dp.load_model(request.model_name, decode_parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @mapped_errors
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._dp.unload_model(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    def _regions(self) -> SharedMemoryRegistry:
        if self._shm is None:
            raise UnsupportedError(
                "system shared memory is off on this server (--shared-memory off): send tensors in the request"
            )
        return self._shm

    @mapped_errors
    async def SystemSharedMemoryStatus(
        self, request: pb.SystemSharedMemoryStatusRequest, context: aio.ServicerContext
    ) -> pb.SystemSharedMemoryStatusResponse:
        make = pb.SystemSharedMemoryStatusResponse.RegionStatus
        regions = self._regions().status(request.name)
        return pb.SystemSharedMemoryStatusResponse(
            regions={r.name: make(name=r.name, key=r.key, offset=r.offset, byte_size=r.byte_size) for r in regions}
        )

    @mapped_errors
    async def SystemSharedMemoryRegister(
        self, request: pb.SystemSharedMemoryRegisterRequest, context: aio.ServicerContext
    ) -> pb.SystemSharedMemoryRegisterResponse:
        # open + fstat + mmap of a tmpfs object: microseconds, fine on the loop.
        self._regions().register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @mapped_errors
    async def SystemSharedMemoryUnregister(
        self, request: pb.SystemSharedMemoryUnregisterRequest, context: aio.ServicerContext
    ) -> pb.SystemSharedMemoryUnregisterResponse:
        self._regions().unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @mapped_errors
    async def CudaSharedMemoryStatus(
        self, request: pb.CudaSharedMemoryStatusRequest, context: aio.ServicerContext
    ) -> pb.CudaSharedMemoryStatusResponse:
        if request.name:
            raise RegionNotFoundError(f"no CUDA shared memory region {request.name!r}: this server registers none")
        return pb.CudaSharedMemoryStatusResponse()

    @mapped_errors
    async def CudaSharedMemoryRegister(
        self, request: pb.CudaSharedMemoryRegisterRequest, context: aio.ServicerContext
    ) -> pb.CudaSharedMemoryRegisterResponse:
        raise UnsupportedError(
            "CUDA shared memory is not supported by this server: use system shared memory "
            "(SystemSharedMemoryRegister) or send the tensor in the request"
        )

    @mapped_errors
    async def CudaSharedMemoryUnregister(
        self, request: pb.CudaSharedMemoryUnregisterRequest, context: aio.ServicerContext
    ) -> pb.CudaSharedMemoryUnregisterResponse:
        return pb.CudaSharedMemoryUnregisterResponse()  # none are ever registered: nothing to do

    observer: ObservabilityInterceptor | None = None
    """Set by `ObservabilityInterceptor.instrument` when tracing or the access log is on: ModelInfer
    starts and ends its call through it, without a wrapper around the hot method."""

    async def ModelInfer(self, request: WireInferRequest, context: aio.ServicerContext) -> bytes:
        """Registered with protocol.wire's (de)serializers: tensors stay views of the wire bytes.

        Maps its errors to status codes itself (status.abort_with), as mapped_errors does for
        the other methods: the hot method has no wrapper coroutine around it."""
        observer = self.observer
        current = None if observer is None else observer.begin_infer(request, context)
        try:
            if request.error is not None:
                raise InvalidInputError(request.error)
            message, shm = request.message, self._shm
            decoded = decode_request(message, _deadline_ns(context), self._limits, request.raw, shm)
            targets = output_targets(shm, message.outputs) if shm is not None and message.outputs else None
            answer = serialize_infer_response(await self._dp.infer(decoded, current), targets)
        except BaseException as exc:
            if observer is not None and current is not None:
                observer.end_infer(current, context, exc)
            await abort_with(exc, context, "ModelInfer", request)
            raise
        if observer is not None and current is not None:
            observer.end_infer(current, context, None)
        return answer

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests of a stream run concurrently; each gets one response or error_message."""
        results: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        deadline = _deadline_ns(context)

        async def one(request: pb.ModelInferRequest) -> None:
            try:
                shm = self._shm
                decoded = decode_request(request, deadline, self._limits, shared_memory=shm)
                targets = output_targets(shm, request.outputs) if shm is not None and request.outputs else None
                response = await self._dp.infer(decoded)
                results.put_nowait(pb.ModelStreamInferResponse(infer_response=encode_response(response, targets)))
            except Exception as exc:  # noqa: BLE001 - a failed request is reported in-stream
                code, message = status_of(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("stream request %r failed", request.id, exc_info=exc)
                results.put_nowait(
                    pb.ModelStreamInferResponse(
                        error_message=message,
                        infer_response=pb.ModelInferResponse(
                            model_name=request.model_name, model_version=request.model_version, id=request.id
                        ),
                    )
                )

        async def read() -> None:
            pending: set[asyncio.Task[None]] = set()
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(one(request))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                if pending:
                    await asyncio.gather(*pending)
            finally:
                for task in pending:
                    task.cancel()
                results.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await results.get()) is not None:
                yield item
            await reader  # surfaces a broken request stream
        finally:
            reader.cancel()


SERVICE_NAME = "inference.GRPCInferenceService"


def add_inference_service(servicer: InferenceServicer, server: aio.Server) -> None:
    """Register the servicer's methods: ModelInfer with protocol.wire's codec, the rest with protobuf's."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        behaviour = getattr(servicer, method.name)
        request_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=parse_infer_request, response_serializer=None
            )
        elif method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
