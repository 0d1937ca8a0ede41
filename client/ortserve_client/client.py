"""InferenceClient: the synchronous client, thin over the shared request builder and decoder.

Each method builds its request (no I/O), makes one call through the client's long-lived
channel under the call policy (deadline, metadata, retries, breaker), and decodes the answer; a
failed call raises the `errors` class of its status code, with the grpc.RpcError chained.
The client is thread-safe: share one per process and target.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
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
from ortserve_client.resilience import UNAVAILABLE, code_of, retry_call
from ortserve_client.result import InferResult, decode_infer_response, decode_stream_response
from ortserve_client.shared_memory import SharedMemoryRegion, SharedOutput

R = TypeVar("R")
OK = grpc.StatusCode.OK


class InferenceClient(ClientBase):
    """Synchronous client of a KServe V2 / Triton gRPC inference server (arguments: `ClientBase`).

    >>> with InferenceClient("localhost:8001") as client:
    ...     result = client.infer("iris", {"input": flowers})
    ...     labels = result["label"]
    """

    def _open(self) -> None:
        self._channel = self.settings.open()
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> InferenceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: Callable[..., R], request: Any, timeout: float | None, key: str | None = None) -> R:
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
                response = method(request, timeout=timeout_s, metadata=metadata)
            except grpc.RpcError as exc:
                retry = policy.retry
                if retry is None or code_of(exc) is not UNAVAILABLE:
                    raise
                deadline = None if timeout_s is None else start + timeout_s
                response = retry_call(lambda t: method(request, timeout=t, metadata=metadata), retry, deadline, exc)
            code = OK
            return response
        except grpc.RpcError as exc:
            code = code_of(exc)
            raise error_from_rpc(exc) from exc
        finally:
            if breaker is not None:
                breaker.record(key or "", code)

    # -- health and metadata ------------------------------------------------------------

    def is_server_live(self, *, timeout: float | None = None) -> bool:
        response: pb.ServerLiveResponse = self._call(self._stub.ServerLive, pb.ServerLiveRequest(), timeout)
        return response.live

    def is_server_ready(self, *, timeout: float | None = None) -> bool:
        response: pb.ServerReadyResponse = self._call(self._stub.ServerReady, pb.ServerReadyRequest(), timeout)
        return response.ready

    def is_model_ready(self, model: str, version: str | int | None = None, *, timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version_str(version))
        response: pb.ModelReadyResponse = self._call(self._stub.ModelReady, request, timeout)
        return response.ready

    def server_metadata(self, *, timeout: float | None = None) -> ServerMetadata:
        return ServerMetadata.from_proto(self._call(self._stub.ServerMetadata, pb.ServerMetadataRequest(), timeout))

    def model_metadata(
        self, model: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version_str(version))
        return ModelMetadata.from_proto(self._call(self._stub.ModelMetadata, request, timeout))

    def model_config(
        self, model: str, version: str | int | None = None, *, timeout: float | None = None
    ) -> mc.ModelConfig:
        """The model's configuration (Triton's ModelConfig message)."""
        request = pb.ModelConfigRequest(name=model, version=version_str(version))
        response: pb.ModelConfigResponse = self._call(self._stub.ModelConfig, request, timeout)
        return response.config

    def model_statistics(
        self, model: str = "", version: str | int | None = None, *, timeout: float | None = None
    ) -> list[pb.ModelStatistics]:
        """Cumulative statistics of one model's versions ("" for every model)."""
        request = pb.ModelStatisticsRequest(name=model, version=version_str(version))
        return list(self._call(self._stub.ModelStatistics, request, timeout).model_stats)

    # -- repository ---------------------------------------------------------------------

    def repository_index(self, *, ready_only: bool = False, timeout: float | None = None) -> list[RepositoryModel]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return [RepositoryModel.from_proto(m) for m in self._call(self._stub.RepositoryIndex, request, timeout).models]

    def load_model(self, model: str, *, config: str | None = None, timeout: float | None = None) -> None:
        """Load (or reload) a model; `config` is a JSON config override, for servers that take one."""
        request = pb.RepositoryModelLoadRequest(model_name=model)
        if config is not None:
            request.parameters["config"].string_param = config
        self._call(self._stub.RepositoryModelLoad, request, timeout)

    def unload_model(self, model: str, *, timeout: float | None = None) -> None:
        self._call(self._stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=model), timeout)

    # -- shared memory ------------------------------------------------------------------

    def register_shared_memory(self, region: SharedMemoryRegion, *, timeout: float | None = None) -> None:
        """Register a region with the server (system shared memory), under `region.name`."""
        request = pb.SystemSharedMemoryRegisterRequest(name=region.name, key=region.key, byte_size=region.byte_size)
        self._call(self._stub.SystemSharedMemoryRegister, request, timeout)

    def unregister_shared_memory(self, name: str = "", *, timeout: float | None = None) -> None:
        """Unregister one region ("" for every region this server has)."""
        request = pb.SystemSharedMemoryUnregisterRequest(name=name)
        self._call(self._stub.SystemSharedMemoryUnregister, request, timeout)

    def shared_memory_status(
        self, name: str = "", *, timeout: float | None = None
    ) -> dict[str, tuple[str, int, int]]:
        """Registered regions ("" for all): name -> (key, offset, byte_size)."""
        request = pb.SystemSharedMemoryStatusRequest(name=name)
        response = self._call(self._stub.SystemSharedMemoryStatus, request, timeout)
        return {r.name: (r.key, r.offset, r.byte_size) for r in response.regions.values()}

    # -- inference ----------------------------------------------------------------------

    def infer(
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
        response = self._call(self._stub.ModelInfer, request, timeout, model)
        return decode_infer_response(response, shared_outputs(outputs))

    def infer_stream(self, requests: Iterable[InferRequest], *, timeout: float | None = None) -> Iterator[InferResult]:
        """Send requests over one ModelStreamInfer stream; yield results as they complete.

        Results come in completion order: match them by `.id` (requests without a
        `request_id` are numbered "0", "1", ... in the order sent). A request that failed
        yields a result with `.error` set (`result.raise_for_error()` raises it); a failure
        of the stream itself raises. The stream has no deadline unless `timeout` is given.
        Leaving the loop early cancels the stream.
        """
        failure: list[BaseException] = []

        def messages() -> Iterator[pb.ModelInferRequest]:
            try:
                for index, request in enumerate(requests):
                    yield build_from(request, str(index))
            except Exception as exc:  # surfaced to the caller below, not lost in gRPC's thread
                failure.append(exc)
                raise

        policy = self.policy
        call = self._stub.ModelStreamInfer(
            messages(), timeout=policy.stream_timeout(timeout), metadata=policy.metadata()
        )
        try:
            for message in call:
                yield decode_stream_response(message)
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from exc
            raise error_from_rpc(exc) from exc
        finally:
            call.cancel()

    def infer_many(
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
        """Infer a large input in requests of `batch_size` rows, `concurrency` at a time.

        `inputs` is a mapping of input name to array, or one array for a model with one input.
        `batch_size` defaults to the model's `max_batch_size`. Returns each output with the
        results' rows joined in input order; the first failure cancels the rest and raises.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        metadata = None if isinstance(inputs, Mapping) else self.model_metadata(model, version, timeout=timeout)
        named = named_inputs(inputs, metadata)
        if batch_size is None:  # the model's own limit; 0 means not batchable: one request
            batch_size = self.model_config(model, version, timeout=timeout).max_batch_size or rows_of(named)
        chunks = split_rows(named, max(batch_size, 1))
        wanted = None if outputs is None else list(outputs)
        with ThreadPoolExecutor(min(concurrency, max(len(chunks), 1)), thread_name_prefix="infer_many") as pool:
            futures = [
                pool.submit(self.infer, model, chunk, outputs=wanted, version=version, timeout=timeout)
                for chunk in chunks
            ]
            try:
                results = [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return join_rows(results)
