"""The inference path end to end: raw and typed inputs, every datatype, outputs, sizes, concurrency.

Answers are compared with in-process onnxruntime on the same model, or with numpy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from ortserve_client.proto import grpc_service_pb2 as pb
from tests import models
from tests.harness import RunningServer, serve_in_thread
from tests.wire import (
    CONTENTS_FIELD,
    DATATYPES,
    Array,
    add_sub_inputs,
    check_add_sub,
    infer_request,
    outputs_of,
    write_config,
)

STRINGS = [b"", "h\u00e9llo w\u00f6rld".encode(), "\u65e5\u672c\u8a9e".encode(), b"plain",
           "\U0001f600".encode(), b"with\x00nul", b"x" * 1000, "\u00df".encode()]


def model_name(datatype: str) -> str:
    return f"id_{datatype.lower()}"


IDENTITY_MODELS = {model_name(dt): models.identity(dt) for dt in DATATYPES}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    repo = tmp_path_factory.mktemp("infer")
    for name, model in IDENTITY_MODELS.items():
        models.save(model, repo, name)
    models.save(models.add_sub(), repo, "add_sub")
    models.save(models.add_sub(dims=("batch", "n")), repo, "add_sub_ragged")
    # Requests that arrive within 5 ms of each other run as one batch: the split is exercised.
    models.save(models.add_sub(), repo, "add_sub_gathered")
    write_config(
        repo, "add_sub_gathered", "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 5000 }\n"
    )
    models.save(models.identity("FP32", dims=(2, 3)), repo, "fixed")
    models.save(models.identity("FP32", dims=("batch", "n")), repo, "wide")
    # Batches of 1 MiB and more: concatenated into memory the batcher keeps between batches.
    models.save(models.identity("FP32", dims=("batch", "n")), repo, "wide_gathered")
    write_config(repo, "wide_gathered", "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 5000 }\n")
    # Batches padded to batch shapes (on CPU only when listed); y - x says how many rows ran.
    models.save(models.rows_seen(), repo, "padded")
    write_config(
        repo,
        "padded",
        'max_batch_size: 8\ndynamic_batching { }\nparameters { key: "batch_shapes" value { string_value: "4" } }\n',
    )
    models.save(models.rows_seen(), repo, "unpadded")
    write_config(repo, "unpadded", "max_batch_size: 8\ndynamic_batching { }\n")
    with serve_in_thread(repo, http_port=-1) as running:
        yield running


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """In-process onnxruntime sessions of the identity models."""
    return {
        name: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        for name, model in IDENTITY_MODELS.items()
    }


def sample(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> Array:
    """Random values of `datatype`, with its extremes in the first elements."""
    size = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([STRINGS[i % len(STRINGS)] for i in range(size)], dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind == "f":
        values = rng.standard_normal(size).astype(dtype)
        info = np.finfo(dtype)
        values[:4] = [info.max, info.min, info.tiny, -0.0]
        return values.reshape(shape)
    info_i = np.iinfo(dtype)
    values = rng.integers(info_i.min, info_i.max, size, dtype=dtype, endpoint=True)
    values[:2] = [info_i.min, info_i.max]
    return values.reshape(shape)


def reference_output(session: Any, array: Array) -> Array:
    feed = array
    if array.dtype == object:  # onnxruntime's string tensors take and give str
        feed = np.array([b.decode() for b in array.reshape(-1)], dtype=object).reshape(array.shape)
    (out,) = session.run(None, {"x": feed})
    if array.dtype == object:
        out = np.array([s.encode() for s in out.reshape(-1)], dtype=object).reshape(out.shape)
    return np.asarray(out)


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_every_datatype_round_trips_through_raw_contents(
    srv: RunningServer, reference: dict[str, Any], datatype: str
) -> None:
    name = model_name(datatype)
    array = sample(datatype, (3, 4), np.random.default_rng(len(datatype)))
    response = srv.stub.ModelInfer(infer_request(name, {"x": array}, request_id=f"dt-{datatype}"))
    assert response.id == f"dt-{datatype}"
    (tensor,) = response.outputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("y", datatype, [3, 4])
    got = outputs_of(response)["y"]
    expected = reference_output(reference[name], array)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("datatype", list(CONTENTS_FIELD))
def test_every_datatype_with_a_contents_field_round_trips_through_typed_contents(
    srv: RunningServer, reference: dict[str, Any], datatype: str
) -> None:
    name = model_name(datatype)
    array = sample(datatype, (2, 4), np.random.default_rng(7 + len(datatype)))
    request = pb.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[2, 4])
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.reshape(-1).tolist())
    response = srv.stub.ModelInfer(request)
    assert response.outputs[0].datatype == datatype
    assert len(response.raw_output_contents) == 1  # outputs always travel raw
    got = outputs_of(response)["y"]
    np.testing.assert_array_equal(got, reference_output(reference[name], array))
    np.testing.assert_array_equal(got, array)


def test_typed_contents_for_a_two_input_model(srv: RunningServer) -> None:
    a, b = add_sub_inputs(3, np.random.default_rng(8))
    request = pb.ModelInferRequest(model_name="add_sub", id="typed")
    for name, array in (("INPUT0", a), ("INPUT1", b)):
        request.inputs.add(name=name, datatype="FP32", shape=[3, 4]).contents.fp32_contents.extend(
            array.reshape(-1).tolist()
        )
    response = srv.stub.ModelInfer(request)
    assert response.id == "typed"
    check_add_sub(response, a, b)


def test_bytes_edge_cases(srv: RunningServer) -> None:
    items = [b"", b"", "\u00e9".encode(), b""]
    array = np.array(items, dtype=object).reshape(1, 4)
    got = outputs_of(srv.stub.ModelInfer(infer_request("id_bytes", {"x": array})))["y"]
    assert got.reshape(-1).tolist() == items


def test_requested_outputs_subset_and_order(srv: RunningServer) -> None:
    a, b = add_sub_inputs(2, np.random.default_rng(9))
    inputs = {"INPUT0": a, "INPUT1": b}
    response = srv.stub.ModelInfer(infer_request("add_sub", inputs, outputs=["OUTPUT1"]))
    out = outputs_of(response)
    assert list(out) == ["OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    response = srv.stub.ModelInfer(infer_request("add_sub", inputs, outputs=["OUTPUT1", "OUTPUT0"]))
    assert [t.name for t in response.outputs] == ["OUTPUT1", "OUTPUT0"]
    out = outputs_of(response)
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)


def test_response_echoes_model_version_and_id(srv: RunningServer) -> None:
    a, b = add_sub_inputs(1, np.random.default_rng(10))
    request = infer_request("add_sub", {"INPUT0": a, "INPUT1": b}, version="1", request_id="\u00fc-42")
    response = srv.stub.ModelInfer(request)
    assert (response.model_name, response.model_version, response.id) == ("add_sub", "1", "\u00fc-42")
    response = srv.stub.ModelInfer(infer_request("add_sub", {"INPUT0": a, "INPUT1": b}))
    assert (response.model_version, response.id) == ("1", "")


def test_non_batching_model(srv: RunningServer) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    response = srv.stub.ModelInfer(infer_request("fixed", {"x": x}))
    assert list(response.outputs[0].shape) == [2, 3]
    np.testing.assert_array_equal(outputs_of(response)["y"], x)


def test_variable_dims_and_inputs_of_different_shapes(srv: RunningServer) -> None:
    rng = np.random.default_rng(11)
    for rows, n in ((1, 1), (3, 7), (2, 100)):
        a, b = add_sub_inputs(rows, rng, width=n)
        check_add_sub(srv.stub.ModelInfer(infer_request("add_sub_ragged", {"INPUT0": a, "INPUT1": b})), a, b)


def test_large_tensor(srv: RunningServer) -> None:
    x = np.random.default_rng(12).standard_normal((1, 16 * 2**20), dtype=np.float32)  # 64 MiB
    response = srv.stub.ModelInfer(infer_request("wide", {"x": x}), timeout=60)
    assert len(response.raw_output_contents[0]) == x.nbytes
    np.testing.assert_array_equal(outputs_of(response)["y"], x)


@pytest.mark.parametrize("model", ["add_sub", "add_sub_gathered", "add_sub_ragged"])
def test_concurrent_requests_each_get_their_own_answer(srv: RunningServer, model: str) -> None:
    """64 concurrent requests of random batch sizes (and widths) get what each would get alone."""
    rng = np.random.default_rng(len(model))
    sent = []
    for i in range(64):
        width = int(rng.integers(1, 4)) if model == "add_sub_ragged" else 4
        a, b = add_sub_inputs(int(rng.integers(1, 9)), rng, width=width)
        request = infer_request(model, {"INPUT0": a, "INPUT1": b}, request_id=f"c-{i}")
        sent.append((f"c-{i}", a, b, srv.stub.ModelInfer.future(request, timeout=60)))
    for request_id, a, b, future in sent:
        response = future.result()
        assert response.id == request_id
        check_add_sub(response, a, b)


def test_large_batches_in_kept_memory_answer_each_request_with_its_own_rows(srv: RunningServer) -> None:
    """Identity outputs may alias the batch's input memory, which the next batch overwrites."""
    before = srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="wide_gathered")).model_stats[0]
    rng = np.random.default_rng(14)
    sent = []
    for _ in range(3):
        wave = []
        for _ in range(24):
            x = rng.standard_normal((int(rng.integers(1, 5)), 1 << 16), dtype=np.float32)  # 256 KiB a row
            wave.append((x, srv.stub.ModelInfer.future(infer_request("wide_gathered", {"x": x}), timeout=60)))
        sent += wave
    for x, future in sent:
        np.testing.assert_array_equal(outputs_of(future.result())["y"], x)
    after = srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="wide_gathered")).model_stats[0]
    executions = after.execution_count - before.execution_count
    rows = after.inference_count - before.inference_count
    assert rows == sum(x.shape[0] for x, _ in sent)
    assert rows / executions >= 4  # batches of 1 MiB and more, on average: the kept-memory path ran


def test_batches_run_padded_to_the_batch_shapes_and_answer_only_their_own_rows(srv: RunningServer) -> None:
    rng = np.random.default_rng(15)
    for rows, ran in ((1, 4), (3, 4), (4, 4), (5, 8), (8, 8)):
        x = rng.standard_normal((rows, 3)).astype(np.float32)
        y = outputs_of(srv.stub.ModelInfer(infer_request("padded", {"x": x})))["y"]
        assert y.shape == (rows, 3)
        np.testing.assert_allclose(y, x + ran, rtol=1e-6)
        alone = outputs_of(srv.stub.ModelInfer(infer_request("unpadded", {"x": x})))["y"]
        np.testing.assert_allclose(alone, x + rows, rtol=1e-6)  # on CPU "auto" pads nothing
    before = srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="padded")).model_stats[0]
    sent = []
    for _ in range(40):
        x = rng.standard_normal((int(rng.integers(1, 4)), 3)).astype(np.float32)
        sent.append((x, srv.stub.ModelInfer.future(infer_request("padded", {"x": x}), timeout=60)))
    for x, future in sent:
        y = outputs_of(future.result())["y"]
        ran = float(np.round(y[0, 0] - x[0, 0]))
        assert ran in (4.0, 8.0) and y.shape == x.shape
        np.testing.assert_allclose(y, x + ran, rtol=1e-5)
    after = srv.stub.ModelStatistics(pb.ModelStatisticsRequest(name="padded")).model_stats[0]
    assert after.inference_count - before.inference_count == sum(x.shape[0] for x, _ in sent)  # real rows only


def test_concurrent_requests_of_every_datatype(srv: RunningServer) -> None:
    rng = np.random.default_rng(13)
    sent = []
    for _ in range(3):
        for datatype in DATATYPES:
            array = sample(datatype, (int(rng.integers(1, 6)), 4), rng)
            sent.append((array, srv.stub.ModelInfer.future(infer_request(model_name(datatype), {"x": array}))))
    for array, future in sent:
        np.testing.assert_array_equal(outputs_of(future.result(timeout=60))["y"], array)


def test_identity_models_are_what_the_tests_think(srv: RunningServer) -> None:
    """Guard for the comparisons above: the server sees the declared types and a -1 batch dim."""
    for datatype in DATATYPES:
        meta = srv.stub.ModelMetadata(pb.ModelMetadataRequest(name=model_name(datatype)))
        assert [(t.datatype, list(t.shape)) for t in meta.inputs] == [(datatype, [-1, 4])]
