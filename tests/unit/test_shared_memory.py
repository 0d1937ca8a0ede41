"""SharedMemoryRegistry without a server: what a key may be, and what unregistering leaves alive."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ortserve.errors import (
    InvalidInputError,
    RegionExistsError,
    RegionNotFoundError,
    ResourceExhaustedError,
    UnsupportedError,
)
from ortserve.protocol import shared_memory
from ortserve.protocol.shared_memory import SharedMemoryRegistry, output_targets, write_outputs
from ortserve_client.proto import grpc_service_pb2 as pb


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "obj").write_bytes(bytes(range(256)) * 4)  # a 1 KiB "shared memory object"
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner").write_bytes(b"\0" * 64)
    return tmp_path


def _params(region: str, byte_size: int, offset: int | None = None) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name="t")
    tensor.parameters["shared_memory_region"].string_param = region
    tensor.parameters["shared_memory_byte_size"].int64_param = byte_size
    if offset is not None:
        tensor.parameters["shared_memory_offset"].int64_param = offset
    return tensor


@pytest.mark.parametrize("key", ["/sub/inner", "sub/inner", "/..", "/.", "", "/", "/a\x00b"])
def test_keys_are_plain_names_under_the_root(root: Path, key: str) -> None:
    with pytest.raises(InvalidInputError, match="not a POSIX shared memory name"):
        SharedMemoryRegistry(root).register("r", key, 0, 16)


def test_a_key_with_or_without_its_slash_maps_the_object(root: Path) -> None:
    registry = SharedMemoryRegistry(root)
    for name, key in (("a", "/obj"), ("b", "obj")):
        region = registry.register(name, key, 256, 512)
        assert bytes(region.data[:3]) == bytes([0, 1, 2]) and len(region.data) == 512
    assert [r.name for r in registry.status()] == ["a", "b"]
    with pytest.raises(RegionExistsError):
        registry.register("a", "/obj", 0, 16)
    with pytest.raises(InvalidInputError, match="runs past the end"):
        registry.register("c", "/obj", 1000, 100)
    with pytest.raises(InvalidInputError, match="byte_size must be positive"):
        registry.register("c", "/obj", 0, 0)


def test_tensors_are_views_and_outlive_their_region(root: Path) -> None:
    registry = SharedMemoryRegistry(root)
    registry.register("r", "/obj", 0, 1024)
    view = registry.tensor("t", _params("r", 8, 4).parameters)
    array = np.frombuffer(view, np.uint8)
    assert array.tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    (root / "obj").write_bytes(b"\xff" * 1024)  # the client writes: the server's view sees it, no copy
    assert array[0] == 255
    registry.unregister("r")
    assert array.tolist() == [255] * 8  # a request in flight keeps its mapping
    with pytest.raises(RegionNotFoundError):
        registry.status("r")
    with pytest.raises(InvalidInputError, match="'r' is not registered"):
        registry.tensor("t", _params("r", 8).parameters)
    registry.unregister("r")  # unknown names are no error


def test_outputs_are_written_once_into_their_targets(root: Path) -> None:
    registry = SharedMemoryRegistry(root)
    registry.register("out", "/obj", 512, 16)
    requested = [
        pb.ModelInferRequest.InferRequestedOutputTensor(name="y", parameters=_params("out", 8).parameters),
        pb.ModelInferRequest.InferRequestedOutputTensor(name="z"),
    ]
    targets = output_targets(registry, requested)
    assert list(targets) == ["y"]
    write_outputs([("y", np.arange(2, dtype=np.float32).tobytes()), ("z", b"ignored")], targets)
    assert (root / "obj").read_bytes()[512:520] == np.arange(2, dtype=np.float32).tobytes()
    with pytest.raises(InvalidInputError, match="output 'y' needs 12 bytes"):
        write_outputs([("y", b"x" * 12)], targets)


def test_without_a_shared_memory_filesystem_registration_is_unimplemented(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="not available"):
        SharedMemoryRegistry(tmp_path / "missing").register("r", "/obj", 0, 16)


def test_an_object_shrunk_removed_or_replaced_after_registration_is_refused_not_read(root: Path) -> None:
    registry = SharedMemoryRegistry(root)
    registry.register("r", "/obj", 0, 1024)
    registry.tensor("t", _params("r", 16, 1000).parameters)
    os.truncate(root / "obj", 512)  # reading past it now would fault the process (SIGBUS)
    with pytest.raises(InvalidInputError, match="removed, replaced or shrunk since it was registered"):
        registry.tensor("t", _params("r", 16, 1000).parameters)
    registry.tensor("t", _params("r", 16, 0).parameters)  # what is still there stays usable
    (root / "obj").unlink()
    (root / "obj").write_bytes(b"\0" * 1024)  # same name, same size, another object
    with pytest.raises(InvalidInputError, match="removed, replaced or shrunk"):
        registry.tensor("t", _params("r", 16, 0).parameters)
    (root / "obj").unlink()
    with pytest.raises(InvalidInputError, match="removed, replaced or shrunk"):
        registry.tensor("t", _params("r", 16, 0).parameters)
    registry.unregister()
    assert registry.status() == []


def test_regions_are_bounded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shared_memory, "MAX_REGIONS", 3)
    registry = SharedMemoryRegistry(root)
    for i in range(3):
        registry.register(f"r{i}", "/obj", 0, 16)
    with pytest.raises(ResourceExhaustedError, match="3 shared memory regions already"):
        registry.register("r3", "/obj", 0, 16)
    registry.unregister("r0")
    registry.register("r3", "/obj", 0, 16)


def test_only_regular_objects_are_mapped_never_what_a_link_points_to(
    root: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    outside = tmp_path_factory.mktemp("outside") / "precious"
    outside.write_bytes(b"keep me" + b"\0" * 57)
    (root / "link").symlink_to(outside)
    os.mkfifo(root / "fifo")
    registry = SharedMemoryRegistry(root)
    with pytest.raises(InvalidInputError, match="cannot open '/link'"):
        registry.register("r", "/link", 0, 16)
    with pytest.raises(InvalidInputError, match="is not a shared memory object"):
        registry.register("r", "/fifo", 0, 16)
    with pytest.raises(InvalidInputError, match="cannot open '/sub'"):
        registry.register("r", "/sub", 0, 16)
    assert outside.read_bytes().startswith(b"keep me") and registry.status() == []
