"""Triton's system shared memory extension against a real server: regions, tensors, errors.

The client side is what a same-host client does: a POSIX shared memory object
(multiprocessing.shared_memory, i.e. shm_open under /dev/shm), registered by name, then named
in the tensors' `shared_memory_*` parameters instead of raw_input_contents.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import add_sub_inputs, check_add_sub, infer_request, rpc_error, write_config

StatusCode = grpc.StatusCode
pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory (/dev/shm)")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("shm")
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.identity("FP32"), repo, "batched")
    write_config(repo, "batched", "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n")
    models.save(models.identity("BYTES", dims=(3,)), repo, "strings")
    with serve_in_thread(repo) as running:
        yield running


@pytest.fixture
def block() -> Iterator[shared_memory.SharedMemory]:
    """A 4 KiB shared memory object, unlinked afterwards."""
    shm = shared_memory.SharedMemory(create=True, size=4096)
    try:
        yield shm
    finally:
        shm.close()
        shm.unlink()


def _register(stub: object, name: str, shm: shared_memory.SharedMemory, offset: int = 0, size: int = 4096) -> None:
    stub.SystemSharedMemoryRegister(  # type: ignore[attr-defined]
        pb.SystemSharedMemoryRegisterRequest(name=name, key="/" + shm.name, offset=offset, byte_size=size), timeout=10
    )


def _in_region(tensor: object, region: str, byte_size: int, offset: int | None = None) -> None:
    params = tensor.parameters  # type: ignore[attr-defined]
    params["shared_memory_region"].string_param = region
    params["shared_memory_byte_size"].int64_param = byte_size
    if offset is not None:
        params["shared_memory_offset"].int64_param = offset


def _array(shm: shared_memory.SharedMemory, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.ndarray(shape, np.float32, buffer=shm.buf, offset=offset)


def _staged(block: shared_memory.SharedMemory, rows: int, seed: int, second_at: int) -> tuple[np.ndarray, np.ndarray]:
    """add_sub's two inputs, written into the block at offset 0 and `second_at`."""
    a, b = add_sub_inputs(rows, np.random.default_rng(seed))
    _array(block, 0, a.shape)[:] = a
    _array(block, second_at, b.shape)[:] = b
    return a, b


def test_the_extension_is_advertised(srv: RunningServer) -> None:
    assert "system_shared_memory" in srv.stub.ServerMetadata(pb.ServerMetadataRequest()).extensions


def test_inputs_and_outputs_in_a_region_give_what_the_wire_gives(
    srv: RunningServer, block: shared_memory.SharedMemory
) -> None:
    a, b = _staged(block, 3, 0, 1024)
    _register(srv.stub, "io", block)
    try:
        status = srv.stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="io"))
        region = status.regions["io"]
        assert (region.name, region.key, region.offset, region.byte_size) == ("io", "/" + block.name, 0, 4096)
        request = pb.ModelInferRequest(model_name="add_sub")
        for name, offset in (("INPUT0", 0), ("INPUT1", 1024)):
            _in_region(request.inputs.add(name=name, datatype="FP32", shape=a.shape), "io", a.nbytes, offset)
        _in_region(request.outputs.add(name="OUTPUT0"), "io", a.nbytes, 2048)
        request.outputs.add(name="OUTPUT1")  # this one comes back on the wire
        response = srv.stub.ModelInfer(request, timeout=10)
        # One raw entry per output, in order: empty for the one written into the region.
        assert [o.name for o in response.outputs] == ["OUTPUT0", "OUTPUT1"]
        assert [list(o.shape) for o in response.outputs] == [[3, 4], [3, 4]]
        assert response.raw_output_contents[0] == b""
        np.testing.assert_array_equal(_array(block, 2048, a.shape), a + b)
        np.testing.assert_array_equal(
            np.frombuffer(response.raw_output_contents[1], np.float32).reshape(a.shape), a - b
        )
    finally:
        srv.stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="io"))


def test_a_region_input_mixes_with_raw_inputs(srv: RunningServer, block: shared_memory.SharedMemory) -> None:
    rng = np.random.default_rng(1)
    a, b = add_sub_inputs(2, rng)
    _array(block, 64, a.shape)[:] = a
    _register(srv.stub, "half", block, offset=64, size=a.nbytes)
    try:
        request = pb.ModelInferRequest(model_name="add_sub")
        _in_region(request.inputs.add(name="INPUT0", datatype="FP32", shape=a.shape), "half", a.nbytes)
        request.inputs.add(name="INPUT1", datatype="FP32", shape=b.shape)
        request.raw_input_contents.append(b.tobytes())  # the one raw entry: for INPUT1
        check_add_sub(srv.stub.ModelInfer(request, timeout=10), a, b)
    finally:
        srv.stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="half"))


def test_concurrent_region_requests_are_batched_and_each_gets_its_own_rows(
    srv: RunningServer, block: shared_memory.SharedMemory
) -> None:
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((int(n), 4)).astype(np.float32) for n in rng.integers(1, 4, 24)]
    offsets, at = [], 0
    for x in rows:
        _array(block, at, x.shape)[:] = x
        offsets.append(at)
        at += x.nbytes
    _register(srv.stub, "many", block)

    def one(i: int) -> np.ndarray:
        request = pb.ModelInferRequest(model_name="batched")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=rows[i].shape)
        _in_region(tensor, "many", rows[i].nbytes, offsets[i])
        response = srv.stub.ModelInfer(request, timeout=20)
        return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(rows[i].shape)

    before = srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="batched")).model_stats[0]
    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(one, range(len(rows))))
    finally:
        srv.stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="many"))
    after = srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="batched")).model_stats[0]
    for x, y in zip(rows, answers, strict=True):
        np.testing.assert_array_equal(y, x)
    assert after.execution_count - before.execution_count < len(rows)  # some requests shared a batch


def test_bytes_tensors_travel_through_a_region(srv: RunningServer, block: shared_memory.SharedMemory) -> None:
    values = [b"shared", b"", b"memory"]
    raw = b"".join(len(v).to_bytes(4, "little") + v for v in values)
    block.buf[: len(raw)] = raw
    _register(srv.stub, "text", block)
    try:
        request = pb.ModelInferRequest(model_name="strings")
        _in_region(request.inputs.add(name="x", datatype="BYTES", shape=[3]), "text", len(raw))
        _in_region(request.outputs.add(name="y"), "text", 1024, 2048)
        response = srv.stub.ModelInfer(request, timeout=10)
        assert response.raw_output_contents[0] == b""
        assert bytes(block.buf[2048 : 2048 + len(raw)]) == raw
    finally:
        srv.stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="text"))


def test_bad_regions_and_references_are_refused_with_what_to_fix(
    srv: RunningServer, block: shared_memory.SharedMemory
) -> None:
    stub = srv.stub
    key = "/" + block.name

    def register(name: str, key: str, offset: int = 0, size: int = 4096) -> grpc.RpcError:
        request = pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=size)
        return rpc_error(lambda: stub.SystemSharedMemoryRegister(request, timeout=10))

    e = register("r", "/ortserve-test-no-such-object")
    assert e.code() == StatusCode.INVALID_ARGUMENT and "no shared memory object" in e.details()
    e = register("r", "/../etc/passwd")
    assert e.code() == StatusCode.INVALID_ARGUMENT and "not a POSIX shared memory name" in e.details()
    e = register("r", key, offset=4000, size=200)
    assert e.code() == StatusCode.INVALID_ARGUMENT and "runs past the end" in e.details()
    e = register("", key)
    assert e.code() == StatusCode.INVALID_ARGUMENT and "needs a name" in e.details()
    e = rpc_error(lambda: stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="nope")))
    assert e.code() == StatusCode.NOT_FOUND and "'nope'" in e.details()

    _register(stub, "r", block, size=64)
    try:
        e = register("r", key)
        assert e.code() == StatusCode.ALREADY_EXISTS and "unregister it first" in e.details()
        a = np.ones((1, 4), np.float32)

        def infer(region: str, byte_size: int, offset: int | None = None, out_size: int | None = None) -> grpc.RpcError:
            request = pb.ModelInferRequest(model_name="add_sub")
            _in_region(request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4]), region, byte_size, offset)
            request.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 4])
            request.raw_input_contents.append(a.tobytes())
            if out_size is not None:
                _in_region(request.outputs.add(name="OUTPUT0"), "r", out_size, 32)
            return rpc_error(lambda: stub.ModelInfer(request, timeout=10))

        e = infer("unknown", 16)
        assert e.code() == StatusCode.INVALID_ARGUMENT and "region 'unknown' is not registered" in e.details()
        e = infer("r", 12)
        assert e.code() == StatusCode.INVALID_ARGUMENT and "needs 16 bytes" in e.details()
        e = infer("r", 16, offset=56)
        assert (
            e.code() == StatusCode.INVALID_ARGUMENT and "do not fit shared memory region 'r' of 64 bytes" in e.details()
        )
        e = infer("r", 16, out_size=8)
        assert e.code() == StatusCode.INVALID_ARGUMENT and "output 'OUTPUT0' needs 16 bytes" in e.details()
        # A raw entry too many: the count names the inputs that are in shared memory.
        request = infer_request("add_sub", {"INPUT0": a, "INPUT1": a})
        _in_region(request.inputs[0], "r", 16)
        e = rpc_error(lambda: stub.ModelInfer(request, timeout=10))
        assert e.code() == StatusCode.INVALID_ARGUMENT and "1 of them in shared memory" in e.details()
        # A parameter of the wrong kind.
        request = infer_request("add_sub", {"INPUT1": a})
        tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4])
        tensor.parameters["shared_memory_region"].string_param = "r"
        tensor.parameters["shared_memory_byte_size"].string_param = "16"
        e = rpc_error(lambda: stub.ModelInfer(request, timeout=10))
        assert e.code() == StatusCode.INVALID_ARGUMENT and "'shared_memory_byte_size' must be int64" in e.details()
    finally:
        stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
    assert not stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest()).regions
    # Unregistered: the region is gone for new requests; the server serves on.
    a, b = add_sub_inputs(1, np.random.default_rng(3))
    check_add_sub(stub.ModelInfer(infer_request("add_sub", {"INPUT0": a, "INPUT1": b}), timeout=10), a, b)


def test_cuda_regions_are_not_offered_and_say_so(srv: RunningServer) -> None:
    stub = srv.stub
    assert not stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest()).regions
    stub.CudaSharedMemoryUnregister(pb.CudaSharedMemoryUnregisterRequest())  # nothing to do, no error
    e = rpc_error(
        lambda: stub.CudaSharedMemoryRegister(
            pb.CudaSharedMemoryRegisterRequest(name="g", raw_handle=b"x" * 64, device_id=0, byte_size=16)
        )
    )
    assert e.code() == StatusCode.UNIMPLEMENTED and "use system shared memory" in e.details()
    e = rpc_error(lambda: stub.CudaSharedMemoryStatus(pb.CudaSharedMemoryStatusRequest(name="g")))
    assert e.code() == StatusCode.NOT_FOUND


def test_shared_memory_off_refuses_regions(
    tmp_path_factory: pytest.TempPathFactory, block: shared_memory.SharedMemory
) -> None:
    repo = tmp_path_factory.mktemp("shm_off")
    models.save(models.add_sub(), repo, "add_sub")
    with serve_in_thread(repo, shared_memory="off") as off:
        assert "system_shared_memory" not in off.stub.ServerMetadata(pb.ServerMetadataRequest()).extensions
        e = rpc_error(lambda: _register(off.stub, "r", block))
        assert e.code() == StatusCode.UNIMPLEMENTED and "--shared-memory off" in e.details()
        a = np.ones((1, 4), np.float32)
        request = infer_request("add_sub", {"INPUT1": a})
        _in_region(request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 4]), "r", 16)
        e = rpc_error(lambda: off.stub.ModelInfer(request, timeout=10))
        assert e.code() == StatusCode.INVALID_ARGUMENT and "shared memory is off on this server" in e.details()


def test_streamed_requests_use_regions_too(srv: RunningServer, block: shared_memory.SharedMemory) -> None:
    a, b = _staged(block, 2, 4, 256)
    _register(srv.stub, "stream", block)
    try:
        request = pb.ModelInferRequest(model_name="add_sub", id="s1")
        _in_region(request.inputs.add(name="INPUT0", datatype="FP32", shape=a.shape), "stream", a.nbytes, 0)
        _in_region(request.inputs.add(name="INPUT1", datatype="FP32", shape=b.shape), "stream", b.nbytes, 256)
        _in_region(request.outputs.add(name="OUTPUT1"), "stream", a.nbytes, 512)
        (reply,) = list(srv.stub.ModelStreamInfer(iter([request]), timeout=10))
        assert reply.error_message == "" and reply.infer_response.id == "s1"
        assert list(reply.infer_response.raw_output_contents) == [b""]
        np.testing.assert_array_equal(_array(block, 512, a.shape), a - b)
    finally:
        srv.stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="stream"))


def _gauges(srv: RunningServer) -> tuple[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return values["ortserve_shared_memory_regions"], values["ortserve_shared_memory_bytes"]


def test_registered_regions_show_in_the_metrics(srv: RunningServer, block: shared_memory.SharedMemory) -> None:
    assert _gauges(srv) == (0, 0)
    _register(srv.stub, "m1", block, size=1000)
    _register(srv.stub, "m2", block, offset=1000, size=24)
    try:
        assert _gauges(srv) == (2, 1024)
    finally:
        srv.stub.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest())
    assert _gauges(srv) == (0, 0)
