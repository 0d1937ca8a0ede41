"""AsyncInferenceClient: the asyncio client, over the same request builder, decoder and call policy.

Create it inside a running event loop (its grpc.aio channel binds to that loop) and close
it with `await client.close()` or `async with`. Cancelling a task that awaits a call
cancels the RPC: the server drops the request if it has not run yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc

from ortserve_client.batches import join_rows, named_inputs, rows_of, split_rows
from ortserve_client.codec import Array, ParameterValue
from ortserve_client.errors import error_from_rpc
from ortserve_client.metadata import ModelMetadata, RepositoryModel, ServerMetadata
from ortserve_client.policy import ClientBase
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.request import InferRequest, build_from, build_infer_request, shared_outputs, version_str
from ortserve_client.resilience import UNAVAILABLE, code_of, retry_call_async
from ortserve_client.result import InferResult, decode_infer_response, decode_stream_response
from ortserve_client.shared_memory import SharedMemoryRegion, SharedOutput

R = TypeVar("R")
OK = grpc.StatusCode.OK


class AsyncInferenceClient(ClientBase):
    """asyncio client of a KServe V2 / Triton gRPC inference server (arguments: `ClientBase`).

    >>> async with AsyncInferenceClient("localhost:8001") as client:
    ...     result = await client.infer("iris", {"input": flowers})
    """

    def _open(self) -> None:
        self._channel = self.settings.open_aio()
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncInferenceClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(
        self, method: Callable[..., Awaitable[R]], request: Any, timeout: float | None, key: str | None = None
    ) -> R:
        """One unary call, retried on UNAVAILABLE; `key` (the model) puts it under the circuit breaker."""
        policy = self.policy
        timeout_s = policy.timeout(timeout)
        metadata = policy.metadata()
        breaker = policy.breaker if key is not None else None
        if breaker is not None:
            breaker.admit(key or "")
        code = None
        start = time.monotonic()
        try:
            try:
                response = await method(request, timeout=timeout_s, metadata=metadata)
            except grpc.RpcError as exc:
                retry = policy.retry
                if retry is None or code_of(exc) is not UNAVAILABLE:
                    raise
                deadline = None if timeout_s is None else start + timeout_s

                def attempt(t: float | None) -> Awaitable[R]:
                    return method(request, timeout=t, metadata=metadata)

                response = await retry_call_async(attempt, retry, deadline, exc)
            code = OK
            return response
        except grpc.RpcError as exc:
            code = code_of(exc)
            raise error_from_rpc(exc) from exc
        finally:
            if breaker is not None:
                breaker.record(key or "", code)

    # -- health and metadata ------------------------------------------------------------

    async def is_server_live(self, *, timeout: float | None = None) -> bool:
        response: pb.ServerLiveResponse = await self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)
        return response.live

    async def is_server_ready(self, *, timeout: float | None = None) -> bool:
        response: pb.ServerReadyResponse = await self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout)
        return response.ready

    async def is_model_ready(
        self, model: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version_str(version))
        response: pb.ModelReadyResponse = await self._call(self._stub.ModelReady, request, timeout)
        return response.ready

    async def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        response = await self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(), timeout)
        return ServerMetadata.from_proto(response)

    async def model_metadata(
        self, model: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version_str(version))
        return ModelMetadata.from_proto(await self._call(self._stub.ModelMetadata, request, timeout))

    async def model_config(
        self, model: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> mc.ModelConfig:
        """The model's configuration (Triton's ModelConfig message)."""
        request = pb.ModelConfigRequest(name=model, version=version_str(version))
        response: pb.ModelConfigResponse = await self._call(self._stub.ModelConfig, request, timeout)
        return response.config

    async def model_statistics(
        self, model: str = "", version: str | int | None = None, *, timeout: float | None = None
    ) -> list[pb.ModelStatistics]:
        """Cumulative statistics of one model's versions ("" for every model)."""
        request = pb.ModelStatisticsRequest(name=model, version=version_str(version))
        return list((await self._call(self._stub.ModelStatistics, request, timeout)).model_stats)

    # -- repository ---------------------------------------------------------------------

    async def repository_index(
        self, *, ready_only: bool = False, timeout: float | None = None
    ) -> list[RepositoryModel]:
        response = await self._call(self._stub.RepositoryIndex, pb.RepositoryIndexRequest(ready=ready_only), timeout)
        return [RepositoryModel.from_proto(m) for m in response.models]

    async def load_model(self, model: str, *, config: str | None = None, timeout: float | None = None) -> None:
        """Load (or reload) a model; `config` is a JSON config override, for servers that take one."""
        request = pb.RepositoryModelLoadRequest(model_name=model)
        if config is not None:
            request.parameters["config"].string_param = config
        await self._call(self._stub.RepositoryModelLoad, request, timeout)

    async def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        await self._call(self._stub.RepositoryModelUnload, request, timeout)

    # -- shared memory ------------------------------------------------------------------

    async def register_shared_memory(self, region: SharedMemoryRegion, *, timeout: float | None = None) -> None:
        """Register a region with the server (system shared memory), under `region.name`."""
        request = pb.SystemSharedMemoryRegisterRequest(name=region.name, key=region.key, byte_size=region.byte_size)
        await self._call(self._stub.SystemSharedMemoryRegister, request, timeout)

    async def unregister_shared_memory(self, name: str = "", *, timeout: float | None = None) -> None:
        """Unregister one region ("" for every region this server has)."""
        request = pb.SystemSharedMemoryUnregisterRequest(name=name)
        await self._call(self._stub.SystemSharedMemoryUnregister, request, timeout)

    async def shared_memory_status(
        self, name: str = "", *, timeout: float | None = None
    ) -> dict[str, tuple[str, int, int]]:
        """Registered regions ("" for all): name -> (key, offset, byte_size)."""
        request = pb.SystemSharedMemoryStatusRequest(name=name)
        response = await self._call(self._stub.SystemSharedMemoryStatus, request, timeout)
        return {r.name: (r.key, r.offset, r.byte_size) for r in response.regions.values()}

    # -- inference ----------------------------------------------------------------------

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        outputs: Iterable[str | SharedOutput] | None = None,
        version: str | int | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        request_id: str | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
    ) -> InferResult:
        """Run one inference; `timeout` is this call's deadline in seconds (default: the client's)."""
        if outputs is not None and not isinstance(outputs, str):
            outputs = list(outputs)  # read twice: into the request, and for the shared memory ones
        request = build_infer_request(
            model,
            inputs,
            outputs=outputs,
            version=version,
            request_id=request_id,
            priority=priority,
            parameters=parameters,
        )
        response = await self._call(self._stub.ModelInfer, request, timeout, model)
        return decode_infer_response(response, shared_outputs(outputs))

    async def infer_stream(
        self,
        requests: Iterable[InferRequest] | AsyncIterable[InferRequest],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[InferResult]:
        """Send requests over one ModelStreamInfer stream; yield results as they complete.

        As `InferenceClient.infer_stream`: completion order, match by `.id` (unnamed requests
        are numbered "0", "1", ...), failed requests carry `.error`; no deadline unless given.
        """
        failure: list[BaseException] = []

        async def messages() -> AsyncIterator[pb.ModelInferRequest]:
            try:
                index = 0
                if isinstance(requests, AsyncIterable):
                    async for request in requests:
                        yield build_from(request, str(index))
                        index += 1
                else:
                    for request in requests:
                        yield build_from(request, str(index))
                        index += 1
            except Exception as exc:  # surfaced to the caller below
                failure.append(exc)
                raise

        policy = self.policy
        call = self._stub.ModelStreamInfer(
            messages(), timeout=policy.stream_timeout(timeout), metadata=policy.metadata()
        )
        try:
            async for message in call:
                yield decode_stream_response(message)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from exc
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    async def infer_many(
        self,
        model: str,
        inputs: Mapping[str, Any] | Array,
        *,
        batch_size: int | None = None,
        concurrency: int = 4,
        outputs: Iterable[str] | None = None,
        version: str | int | None = None,
        timeout: float | None = None,
    ) -> dict[str, Array]:
        """As `InferenceClient.infer_many`: split into `batch_size` rows, `concurrency` in flight, join in order."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        metadata = None if isinstance(inputs, Mapping) else await self.model_metadata(model, version, timeout=timeout)
        named = named_inputs(inputs, metadata)
        if batch_size is None:  # the model's own limit; 0 means not batchable: one request
            config = await self.model_config(model, version, timeout=timeout)
            batch_size = config.max_batch_size or rows_of(named)
        chunks = split_rows(named, max(batch_size, 1))
        wanted = None if outputs is None else list(outputs)
        results: list[InferResult | None] = [None] * len(chunks)
        order = iter(range(len(chunks)))

        async def worker() -> None:
            for index in order:  # shared: each index is taken by one worker
                chunk = chunks[index]
                results[index] = await self.infer(model, chunk, outputs=wanted, version=version, timeout=timeout)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(chunks)))]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        return join_rows([r for r in results if r is not None])
