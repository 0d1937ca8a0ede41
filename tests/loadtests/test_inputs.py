"""Requests from a model's metadata (seeded) or from a .npz, checked against the metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtests.inputs import InputError, from_npz, generate, parse_models, parse_npz_files, resolve_shape
from ortserve_client import InferenceClient, ModelMetadata, TensorMetadata
from tests import models
from tests.harness import serve_in_thread

DATATYPES = ("FP32", "FP16", "FP64", "INT64", "INT32", "UINT8", "BOOL", "BYTES")


def meta(name: str, *tensors: tuple[str, str, tuple[int, ...]]) -> ModelMetadata:
    return ModelMetadata(name, ("1",), "onnxruntime_onnx", tuple(TensorMetadata(*t) for t in tensors), ())


def test_resolve_shape_sets_the_batch_and_the_other_dynamic_dimensions() -> None:
    assert resolve_shape((-1, 4), 8, 3) == (8, 4)
    assert resolve_shape((-1, -1, 2), 8, 3) == (8, 3, 2)
    assert resolve_shape((5, -1), 8, 3) == (5, 3)
    assert resolve_shape((), 8, 3) == ()


def test_generated_requests_are_reproducible_per_seed_and_differ_per_model() -> None:
    x = meta("a", ("x", "FP32", (-1, 4)))
    first, again = generate(x, batch_size=2, seed=7, count=3), generate(x, batch_size=2, seed=7, count=3)
    assert len(first) == 3 and first[0]["x"].shape == (2, 4) and first[0]["x"].dtype == np.float32
    assert all(np.array_equal(a["x"], b["x"]) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0]["x"], first[1]["x"])
    assert not np.array_equal(first[0]["x"], generate(x, batch_size=2, seed=8)[0]["x"])
    other = meta("b", ("x", "FP32", (-1, 4)))
    assert not np.array_equal(first[0]["x"], generate(other, batch_size=2, seed=7)[0]["x"])


def test_a_datatype_numpy_cannot_hold_asks_for_a_npz() -> None:
    with pytest.raises(InputError, match=r"model 'a' input 'x': cannot generate datatype BF16.*\.npz"):
        generate(meta("a", ("x", "BF16", (-1, 4))))


def test_generated_inputs_of_every_datatype_are_accepted_by_a_real_server(repo: Path) -> None:
    for datatype in DATATYPES:
        models.save(models.identity(datatype, ("batch", None)), repo, f"id_{datatype.lower()}")
    with serve_in_thread(repo) as server, InferenceClient(server.grpc_target) as client:
        for datatype in DATATYPES:
            name = f"id_{datatype.lower()}"
            metadata = client.model_metadata(name)
            assert metadata.inputs[0].shape == (-1, -1)
            for request in generate(metadata, batch_size=3, dim_size=5, seed=1, count=2):
                result = client.infer(name, request)
                assert result["y"].shape == (3, 5)
                assert np.array_equal(result["y"], request["x"]), datatype


def test_npz_rows_are_cut_into_requests_of_the_batch_size(tmp_path: Path) -> None:
    m = meta("add", ("INPUT0", "FP32", (-1, 4)), ("INPUT1", "FP32", (-1, 4)))
    a, b = np.arange(40, dtype=np.float32).reshape(10, 4), -np.ones((10, 4), np.float32)
    path = tmp_path / "in.npz"
    np.savez(path, INPUT0=a, INPUT1=b)
    requests = from_npz(m, path, batch_size=4)
    assert len(requests) == 2  # rows 0-3 and 4-7; the partial last batch is left out
    assert np.array_equal(requests[1]["INPUT0"], a[4:8]) and np.array_equal(requests[0]["INPUT1"], b[:4])
    assert len(from_npz(m, path, batch_size=64)) == 1  # fewer rows than a batch: one request of all of them


def test_npz_of_a_one_input_model_may_name_its_array_anything(tmp_path: Path) -> None:
    path = tmp_path / "flowers.npz"
    np.savez(path, flowers=np.ones((3, 4), np.float32))
    requests = from_npz(meta("iris", ("input", "FP32", (-1, 4))), path, batch_size=1)
    assert len(requests) == 3 and set(requests[0]) == {"input"}


def test_a_non_batchable_model_sends_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, x=np.ones((2, 3), np.int64))
    requests = from_npz(meta("fixed", ("x", "INT64", (2, 3))), path, batch_size=8)
    assert len(requests) == 1 and requests[0]["x"].shape == (2, 3)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"INPUT0": np.ones((2, 4), np.float32)}, r"lacks input\(s\) \['INPUT1'\]; it holds \['INPUT0'\]"),
        ({"INPUT0": np.ones((2, 4)), "INPUT1": np.ones((2, 4), np.float32)}, "expected FP32 .*, got float64"),
        ({"INPUT0": np.ones((2, 5), np.float32), "INPUT1": np.ones((2, 4), np.float32)}, r"expected shape \[-1, 4\]"),
        ({"INPUT0": np.ones((2, 4), np.float32), "INPUT1": np.ones((3, 4), np.float32)}, "differ in rows"),
    ],
)
def test_a_npz_that_does_not_fit_the_model_is_refused_before_any_load(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=message):
        from_npz(meta("add", ("INPUT0", "FP32", (-1, 4)), ("INPUT1", "FP32", (-1, 4))), path)


def test_an_unreadable_npz_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(InputError, match="cannot read"):
        from_npz(meta("a", ("x", "FP32", (-1,))), tmp_path / "x.npz")


def test_model_and_file_specs() -> None:
    assert [(c.name, c.weight) for c in parse_models("iris, other:3,")] == [("iris", 1), ("other", 3)]
    for bad in ("iris:x", "iris:0", ":2"):
        with pytest.raises(InputError):
            parse_models(bad)
    assert parse_npz_files("a.npz", ["iris", "x"]) == {"iris": Path("a.npz"), "x": Path("a.npz")}
    assert parse_npz_files("x=b.npz", ["iris", "x"]) == {"x": Path("b.npz")}
    with pytest.raises(InputError, match="not in the run"):
        parse_npz_files("nope=b.npz", ["iris"])
