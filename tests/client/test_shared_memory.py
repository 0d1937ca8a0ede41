"""The client's shared memory inputs against a real server: same answers as the wire, sync and async."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ortserve_client import AsyncInferenceClient, InferenceClient, InvalidInputError, SharedMemoryRegion
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
                    result = await aclient.infer("add_sub", {"INPUT0": ra, "INPUT1": ra})
                    np.testing.assert_array_equal(result["OUTPUT0"], a + a)
                finally:
                    await aclient.unregister_shared_memory()

    asyncio.run(main())
