"""The client's shared memory inputs against a real server: same answers as the wire, sync and async."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ortserve_client import AsyncInferenceClient, InferenceClient, InvalidInputError, SharedMemoryRegion, SharedTensor
from tests.client.conftest import IDENTITY
from tests.harness import RunningServer

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs POSIX shared memory (/dev/shm)")


def test_inputs_from_a_region_give_what_the_wire_gives(client: InferenceClient) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    with SharedMemoryRegion("client-io", 4096) as region:
        client.register_shared_memory(region)
        try:
            assert client.shared_memory_status() == {"client-io": (region.key, 0, 4096)}
            ra = region.put(a)
            assert (ra.offset, ra.byte_size, ra.datatype, ra.shape) == (0, 48, "FP32", (3, 4))
            rb = region.put(b)
            assert rb.offset == 64  # aligned after the first
            np.testing.assert_array_equal(region.view(rb), b)
            shared = client.infer("add_sub", {"INPUT0": ra, "INPUT1": rb})
            mixed = client.infer("add_sub", {"INPUT0": ra, "INPUT1": b})  # one named, one sent
            wire = client.infer("add_sub", {"INPUT0": a, "INPUT1": b})
            for result in (shared, mixed):
                np.testing.assert_array_equal(result["OUTPUT0"], wire["OUTPUT0"])
                np.testing.assert_array_equal(result["OUTPUT1"], wire["OUTPUT1"])
            text = np.array([b"shared", b"", b"memory"], dtype=object).reshape(1, 3, 1)
            rt = region.put(text)
            assert rt.datatype == "BYTES"
            assert client.infer(IDENTITY["BYTES"], {"x": rt})["y"].tolist() == text.tolist()
        finally:
            client.unregister_shared_memory("client-io")
    assert client.shared_memory_status() == {}


def test_a_region_that_is_too_small_or_not_registered_says_so(client: InferenceClient) -> None:
    with SharedMemoryRegion("client-small", 64) as region:
        with pytest.raises(ValueError, match="does not fit region 'client-small' of 64 bytes"):
            region.put(np.zeros(32, np.float32))
        tensor = region.put(np.ones((1, 4), np.float32))
        with pytest.raises(InvalidInputError, match="'client-small' is not registered"):
            client.infer("add_sub", {"INPUT0": tensor, "INPUT1": np.ones((1, 4), np.float32)})
        region.reset()
        assert region.put(np.ones((1, 4), np.float32)).offset == 0


def test_the_async_client_uses_regions_too(srv: RunningServer) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)

    async def main() -> None:
        async with AsyncInferenceClient(srv.grpc_target) as aclient:
            with SharedMemoryRegion("client-async", 1024) as region:
                await aclient.register_shared_memory(region)
                try:
                    assert list(await aclient.shared_memory_status("client-async")) == ["client-async"]
                    ra = region.put(a)
                    out1 = region.output("OUTPUT1", a.nbytes)
                    result = await aclient.infer("add_sub", {"INPUT0": ra, "INPUT1": ra}, outputs=["OUTPUT0", out1])
                    np.testing.assert_array_equal(result["OUTPUT0"], a + a)
                    np.testing.assert_array_equal(result["OUTPUT1"], a - a)
                finally:
                    await aclient.unregister_shared_memory()

    asyncio.run(main())


def test_outputs_into_a_region_come_back_as_views_of_it(client: InferenceClient) -> None:
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    with SharedMemoryRegion("client-out", 4096) as region:
        client.register_shared_memory(region)
        try:
            ra = region.put(a)
            out0 = region.output("OUTPUT0", a.nbytes)
            result = client.infer("add_sub", {"INPUT0": ra, "INPUT1": a}, outputs=iter([out0, "OUTPUT1"]))
            assert list(result) == ["OUTPUT0", "OUTPUT1"]
            np.testing.assert_array_equal(result["OUTPUT0"], a + a)  # read from the region
            np.testing.assert_array_equal(result["OUTPUT1"], a - a)  # from the response
            assert not result["OUTPUT0"].flags.writeable
            np.testing.assert_array_equal(region.view(ra), a)  # the input was not overwritten
            with pytest.raises(ValueError, match="do not fit region 'client-out'"):
                region.output("OUTPUT0", 8192)
            # A BYTES output's length is unknown in advance: the client says to take it in the response.
            text = region.put(np.array([b"a", b"bc", b"d"], dtype=object).reshape(1, 3, 1))
            with pytest.raises(ValueError, match="BYTES outputs cannot come back through shared memory"):
                client.infer(IDENTITY["BYTES"], {"x": text}, outputs=[region.output("y", 64)])
        finally:
            client.unregister_shared_memory("client-out")


def test_a_streamed_output_in_a_region_is_left_out_of_the_result(client: InferenceClient) -> None:
    from ortserve_client import InferRequest

    a = np.ones((1, 4), np.float32)
    with SharedMemoryRegion("client-stream", 1024) as region:
        client.register_shared_memory(region)
        try:
            out0 = region.output("OUTPUT0", a.nbytes)
            request = InferRequest("add_sub", {"INPUT0": a, "INPUT1": a}, outputs=[out0, "OUTPUT1"], request_id="s")
            (result,) = list(client.infer_stream([request]))
            assert result.raise_for_error() and list(result) == ["OUTPUT1"] and result.as_numpy("OUTPUT0") is None
            np.testing.assert_array_equal(region.view(SharedTensor("client-stream", 0, 16, "FP32", (1, 4))), a + a)
        finally:
            client.unregister_shared_memory("client-stream")
