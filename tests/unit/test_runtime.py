"""The runtime room against real onnxruntime sessions of small models built with tests/models.py."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import types
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ortserve.errors import InternalError, InvalidInputError, ModelLoadError
from ortserve.runtime import (
    InstanceSpec,
    OnnxModel,
    RuntimeOptions,
    TensorInfo,
    available_cores,
    choose_providers,
    threads_per_instance,
)
from ortserve.runtime import threads as threads_module
from tests import models
from tests.wire import sleeper

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
HAS_CUDA = CUDA in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="needs onnxruntime-gpu and a GPU (no CUDAExecutionProvider here)"
)
without_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks behaviour when CUDAExecutionProvider is absent")

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"]


def load(path: Path, count: int = 1, options: RuntimeOptions | None = None, name: str = "m_1") -> OnnxModel:
    return OnnxModel.load(path, [InstanceSpec()] * count, options or RuntimeOptions(), name=name)


@pytest.fixture
def add_sub(tmp_path: Path) -> Path:
    return models.save(models.add_sub(), tmp_path, "add_sub")


def sample(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray[Any, Any]:
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = np.dtype({"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}.get(datatype, datatype.lower()))
    if dtype.kind == "f":
        values = rng.standard_normal(shape).astype(dtype)
        values.flat[0] = np.finfo(dtype).max
        values.flat[1] = np.finfo(dtype).tiny
        return values
    info = np.iinfo(dtype)
    values = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    values.flat[0], values.flat[1] = info.min, info.max
    return values


# --- loading and running ------------------------------------------------------------------


def test_add_sub_matches_numpy(add_sub: Path) -> None:
    model = load(add_sub)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((3, 4)).astype(np.float32)
    out = model.instances[0].run({"INPUT0": a, "INPUT1": b})
    assert list(out) == ["OUTPUT0", "OUTPUT1"]
    np.testing.assert_array_equal(out["OUTPUT0"], a + b)
    np.testing.assert_array_equal(out["OUTPUT1"], a - b)
    assert out["OUTPUT0"].dtype == np.float32
    assert model.path == add_sub
    model.close()


def test_run_accepts_any_mapping(add_sub: Path) -> None:
    model = load(add_sub)
    a = np.ones((1, 4), np.float32)
    out = model.instances[0].run(types.MappingProxyType({"INPUT0": a, "INPUT1": a}))
    np.testing.assert_array_equal(out["OUTPUT0"], a * 2)


@pytest.mark.parametrize("datatype", NUMERIC)
def test_identity_round_trips_numeric(tmp_path: Path, datatype: str) -> None:
    model = load(models.save(models.identity(datatype), tmp_path, "id"))
    assert model.inputs == [TensorInfo("x", datatype, (-1, 4))]
    assert model.outputs == [TensorInfo("y", datatype, (-1, 4))]
    x = sample(datatype, (5, 4), np.random.default_rng(1))
    y = model.instances[0].run({"x": x})["y"]
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, x)


BYTES_VALUES = [b"plain", "h\u00e9llo w\u00f6rld".encode(), b"", "\u65e5\u672c\u8a9e \U0001f600".encode(),
                b"nul\x00inside", b"trailing nul\x00", b"", b"\x7f"]


def test_identity_round_trips_bytes(tmp_path: Path) -> None:
    model = load(models.save(models.identity("BYTES"), tmp_path, "id"))
    assert model.inputs == [TensorInfo("x", "BYTES", (-1, 4))]
    x = np.array(BYTES_VALUES, dtype=object).reshape(2, 4)
    feeds = {"x": x}
    y = model.instances[0].run(feeds)["y"]
    assert y.shape == (2, 4) and y.dtype == object
    assert all(type(v) is bytes for v in y.flat)
    assert y.tolist() == x.tolist()
    assert feeds["x"] is x and type(x[0, 0]) is bytes  # the caller's feeds are left alone


def test_bytes_of_a_non_contiguous_view_and_of_an_empty_batch(tmp_path: Path) -> None:
    model = load(models.save(models.identity("BYTES"), tmp_path, "id"))
    x = np.array(BYTES_VALUES * 2, dtype=object).reshape(4, 4)[::2]
    assert model.instances[0].run({"x": x})["y"].tolist() == x.tolist()
    empty = np.empty((0, 4), dtype=object)
    assert model.instances[0].run({"x": empty})["y"].shape == (0, 4)


def test_bytes_that_are_not_utf8_are_the_callers_fault(tmp_path: Path) -> None:
    model = load(models.save(models.identity("BYTES"), tmp_path, "id"))
    x = np.array([[b"ok", b"ok", b"\xff\xfe", b"ok"]], dtype=object)
    with pytest.raises(InvalidInputError, match=r"input 'x': element 2 is not valid UTF-8"):
        model.instances[0].run({"x": x})
    with pytest.raises(InvalidInputError, match=r"input 'x': BYTES elements must be bytes, got int"):
        model.instances[0].run({"x": np.array([[b"a", 1, b"b", b"c"]], dtype=object)})


def test_tensor_info_shapes(tmp_path: Path) -> None:
    model = load(models.save(models.identity("INT64", ("batch", None, 3)), tmp_path, "id"))
    assert model.inputs == [TensorInfo("x", "INT64", (-1, -1, 3))]
    fixed = load(models.save(models.scale(3.0, (2, 3)), tmp_path, "scale"))
    assert fixed.inputs == [TensorInfo("x", "FP32", (2, 3))]
    assert fixed.outputs == [TensorInfo("y", "FP32", (2, 3))]
    scalar = load(models.save(models.identity("FP32", ()), tmp_path, "scalar"))
    assert scalar.inputs == [TensorInfo("x", "FP32", ())]
    assert scalar.instances[0].run({"x": np.array(1.5, np.float32)})["y"] == np.float32(1.5)


def test_unsupported_tensor_type_is_a_load_error(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("SequenceConstruct", ["x"], ["seq"])],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", models.OPSET)])
    model.ir_version = models.IR_VERSION
    path = tmp_path / "seq.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match=r"model 'm_1' output 'seq' has type seq\(tensor\(float\)\)"):
        load(path)


# --- instances and threads ----------------------------------------------------------------


def test_several_instances_are_several_sessions(add_sub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_module, "available_cores", lambda: 4)
    model = load(add_sub, count=2, name="add_sub_1")
    assert [i.name for i in model.instances] == ["add_sub_1_0", "add_sub_1_1"]
    assert model.instances[0] is not model.instances[1]
    a = np.full((2, 4), 3, np.float32)
    for instance in model.instances:
        assert instance.device == "cpu" and instance.providers == [CPU]
        assert instance.intra_op_threads == 2  # 4 cores / 2 instances, read back from the session
        np.testing.assert_array_equal(instance.run({"INPUT0": a, "INPUT1": a})["OUTPUT1"], a * 0)
    model.close()
    model.close()  # idempotent
    with pytest.raises(InternalError, match="instance 'add_sub_1_0' is closed"):
        model.instances[0].run({"INPUT0": a, "INPUT1": a})


def test_explicit_intra_op_threads_win(add_sub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_module, "available_cores", lambda: 4)
    model = load(add_sub, count=3, options=RuntimeOptions(intra_op_threads=3))
    assert [i.intra_op_threads for i in model.instances] == [3, 3, 3]


def test_load_logs_its_choice(add_sub: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ortserve.runtime"):
        load(add_sub, options=RuntimeOptions(intra_op_threads=2, allow_spinning=True), name="x_1")
    (record,) = [r for r in caplog.records if r.name == "ortserve.runtime"]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert "'x_1_0'" in message and CPU in message
    assert "intra_op_threads 2" in message and "spinning on" in message


@pytest.mark.parametrize(
    ("instances", "requested", "cores", "expected"),
    [(2, 0, 4, 2), (1, 0, 4, 4), (3, 0, 4, 1), (8, 0, 4, 1), (2, 3, 4, 3), (1, 16, 2, 16), (0, 0, 4, 4)],
)
def test_threads_per_instance(instances: int, requested: int, cores: int, expected: int) -> None:
    assert threads_per_instance(instances, requested, cores) == expected


def test_threads_per_instance_defaults_to_available_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads_module, "available_cores", lambda: 6)
    assert threads_per_instance(3, 0) == 2


# --- available_cores ----------------------------------------------------------------------


@pytest.fixture
def eight_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


@pytest.mark.usefixtures("eight_cores")
@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000"}, 2),
        ({"cpu.max": "max 100000"}, 8),
        ({"cpu.max": "150000 100000"}, 1),  # a fractional quota rounds down
        ({"cpu.max": "50000 100000"}, 1),  # but never to 0
        ({"cpu.max": "1600000 100000"}, 8),  # the affinity mask still caps
        ({"cpu.max": "garbage"}, 8),
        ({"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "400000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}, 4),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 8),
        ({}, 8),
    ],
)
def test_available_cores_honours_cgroup_quota(tmp_path: Path, files: dict[str, str], expected: int) -> None:
    assert available_cores(write(tmp_path, files)) == expected
    assert available_cores(str(tmp_path)) == expected


def test_available_cores_on_this_machine() -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert 1 <= available_cores() <= affinity
    assert available_cores("/nonexistent/cgroup") == affinity


# --- providers ----------------------------------------------------------------------------

CUDA_0 = [(CUDA, {"device_id": 0}), CPU]


@pytest.mark.parametrize(
    ("device", "kind", "gpu_id", "available", "expected"),
    [
        ("cpu", "auto", 0, [CUDA, CPU], [CPU]),
        ("cpu", "gpu", 0, [CUDA, CPU], [CPU]),
        ("auto", "cpu", 0, [CUDA, CPU], [CPU]),
        ("cuda", "cpu", 0, [CUDA, CPU], [CPU]),
        ("cuda", "cpu", 0, [CPU], [CPU]),
        ("auto", "auto", 0, [CUDA, CPU], CUDA_0),
        ("auto", "gpu", 1, [CUDA, CPU], [(CUDA, {"device_id": 1}), CPU]),
        ("auto", "auto", 0, [CPU], [CPU]),
        ("auto", "gpu", 0, ["AzureExecutionProvider", CPU], [CPU]),
        ("cuda", "auto", 0, [CUDA, CPU], CUDA_0),
        ("cuda", "gpu", 2, [CUDA, CPU], [(CUDA, {"device_id": 2}), CPU]),
    ],
)
def test_choose_providers(
    device: str, kind: str, gpu_id: int, available: list[str], expected: list[object]
) -> None:
    assert choose_providers(device, kind, gpu_id, available) == expected


@pytest.mark.parametrize("kind", ["auto", "gpu"])
def test_choose_providers_cuda_demanded_but_absent(kind: str) -> None:
    with pytest.raises(ModelLoadError, match="device 'cuda' was requested but this onnxruntime has no CUDA"):
        choose_providers("cuda", kind, 0, [CPU])


@pytest.mark.parametrize(
    ("device", "kind", "gpu_id", "match"),
    [("tpu", "auto", 0, "unknown device 'tpu'"), ("auto", "KIND_GPU", 0, "unknown instance kind"),
     ("cuda", "gpu", -1, "gpu id must be 0 or more")],
)
def test_choose_providers_rejects_nonsense(device: str, kind: str, gpu_id: int, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        choose_providers(device, kind, gpu_id, [CUDA, CPU])


# --- load errors --------------------------------------------------------------------------


def test_missing_file_is_a_load_error(tmp_path: Path) -> None:
    missing = tmp_path / "m" / "1" / "model.onnx"
    with pytest.raises(ModelLoadError, match=f"model 'm_1': model file {missing} does not exist"):
        load(missing)


def test_garbage_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00\xffnot an onnx model at all\x13\x37" * 10)
    with pytest.raises(ModelLoadError, match="is not a valid ONNX model: .*Protobuf parsing failed") as info:
        load(path)
    assert "m_1_0" in str(info.value) and info.value.__cause__ is not None


def test_no_instances_is_a_load_error(add_sub: Path) -> None:
    with pytest.raises(ModelLoadError, match="at least one instance"):
        OnnxModel.load(add_sub, [], RuntimeOptions(), name="m_1")


@without_cuda
def test_cuda_demanded_without_cuda_is_a_load_error(add_sub: Path) -> None:
    match = r"instance 'm_1_0': device 'cuda' was requested .*--device auto"
    with pytest.raises(ModelLoadError, match=match):
        load(add_sub, options=RuntimeOptions(device="cuda"))


@without_cuda
def test_kind_gpu_falls_back_to_cpu_with_a_warning(add_sub: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = OnnxModel.load(add_sub, [InstanceSpec(kind="gpu")], RuntimeOptions(), name="m_1")
    assert model.instances[0].device == "cpu"
    assert any(r.levelno == logging.WARNING and "KIND_GPU" in r.getMessage() for r in caplog.records)


def pretend_gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """What onnxruntime-gpu on a machine without a usable GPU looks like: CUDA is offered,
    yet the session quietly ends up on CPU (here: ORT drops the provider it does not have)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])


@without_cuda
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_session_that_got_cpu_warns_under_auto(
    add_sub: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pretend_gpu_build(monkeypatch)
    model = load(add_sub)
    instance = model.instances[0]
    assert instance.device == "cpu" and instance.providers == [CPU]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'m_1_0'" in w and "got only" in w for w in warnings)
    a = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(instance.run({"INPUT0": a, "INPUT1": a})["OUTPUT0"], a + a)


@without_cuda
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_cuda_session_that_got_cpu_fails_when_cuda_demanded(
    add_sub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pretend_gpu_build(monkeypatch)
    with pytest.raises(ModelLoadError, match=r"device 'cuda' was requested but the session got only"):
        load(add_sub, options=RuntimeOptions(device="cuda"))


def test_sessions_already_created_are_released_when_a_later_one_fails(
    add_sub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created: list[weakref.ref[Any]] = []

    class Recorded(ort.InferenceSession):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(weakref.ref(self))

    monkeypatch.setattr(ort, "InferenceSession", Recorded)
    specs = [InstanceSpec(), InstanceSpec(), InstanceSpec(kind="tpu")]
    with pytest.raises(ModelLoadError, match="instance 'm_1_2': unknown instance kind 'tpu'") as info:
        OnnxModel.load(add_sub, specs, RuntimeOptions(), name="m_1")
    gc.collect()
    assert len(created) == 2
    # Released even while the error (and its traceback, with load's frame) is still held,
    # as a repository that keeps the failure to report it would hold it.
    assert info.value.__traceback__ is not None
    assert all(ref() is None for ref in created)


# --- run errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "feeds",
    [
        {"INPUT0": np.ones((1, 4), np.float64), "INPUT1": np.ones((1, 4), np.float64)},  # wrong dtype
        {"INPUT0": np.ones((1, 4), np.float32)},  # missing input
        {"INPUT0": np.ones((2, 4), np.float32), "INPUT1": np.ones((3, 4), np.float32)},  # shapes clash
    ],
)
def test_a_failing_run_is_an_internal_error(add_sub: Path, feeds: dict[str, Any]) -> None:
    model = load(add_sub, name="add_sub_1")
    with pytest.raises(InternalError, match="instance 'add_sub_1_0': onnxruntime run failed: .+") as info:
        model.instances[0].run(feeds)
    assert info.value.__cause__ is not None


def test_a_value_a_node_rejects_as_it_runs_is_invalid_input(tmp_path: Path) -> None:
    """ONNX Runtime's INVALID_ARGUMENT from a node (Gather: index out of the table) is the request's
    values: INVALID_ARGUMENT for the caller, with ORT's account; its FAIL (out of memory) stays INTERNAL."""
    lookup = load(models.save(models.lookup(), tmp_path, "lookup"), name="lookup_1")
    assert lookup.instances[0].run({"idx": np.array([[3]], np.int64)})["y"].tolist() == [[13.0]]
    with pytest.raises(InvalidInputError, match=r"instance 'lookup_1_0': the model cannot take .+idx=99") as info:
        lookup.instances[0].run({"idx": np.array([[99]], np.int64)})
    assert info.value.__cause__ is not None
    allocating = load(models.save(models.allocating(), tmp_path, "allocating"), name="allocating_1")
    assert allocating.instances[0].run({"n": np.array([[5]], np.int64)})["y"].tolist() == [[5.0]]
    with pytest.raises(InternalError, match="instance 'allocating_1_0': onnxruntime run failed: .*Range"):
        allocating.instances[0].run({"n": np.array([[2**50]], np.int64)})


def test_a_failed_run_writes_no_raw_onnxruntime_line_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """ONNX Runtime logs a failed run's status to stderr itself, outside the JSON logs; the run
    options keep it quiet (the error reaches the caller, and the server's own log when it is INTERNAL)."""
    lookup = load(models.save(models.lookup(), tmp_path, "lookup"), name="lookup_1")
    capfd.readouterr()
    with pytest.raises(InvalidInputError):
        lookup.instances[0].run({"idx": np.array([[99]], np.int64)})
    assert "onnxruntime" not in capfd.readouterr().err


def test_with_debug_logs_a_failed_run_keeps_onnxruntime_s_own_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ortserve.runtime")
    lookup = load(models.save(models.lookup(), tmp_path, "lookup"), name="lookup_1")
    capfd.readouterr()
    with pytest.raises(InvalidInputError):
        lookup.instances[0].run({"idx": np.array([[99]], np.int64)})
    assert "onnxruntime" in capfd.readouterr().err


def test_stop_ends_the_run_in_progress_and_resume_lets_the_next_run(tmp_path: Path) -> None:
    """OrtInstance.stop from another thread sets ONNX Runtime's terminate flag: the run ends early
    with an error (between a Loop's iterations here) and so does any run until resume."""
    model = load(models.save(sleeper(), tmp_path, "sleeper"), name="sleeper_1")
    instance = model.instances[0]
    started = threading.Event()
    endless = {"x": np.array([100_000], np.int64)}  # many seconds of iterations, unless stopped

    def stop_when_running() -> None:
        started.wait(10)
        time.sleep(0.05)
        instance.stop()

    stopper = threading.Thread(target=stop_when_running)
    stopper.start()
    started.set()
    with pytest.raises(InternalError, match="terminate"):
        instance.run(endless)
    stopper.join()
    with pytest.raises(InternalError, match="terminate"):  # stopped until resumed
        instance.run({"x": np.array([1], np.int64)})
    instance.resume()
    assert instance.run({"x": np.array([2], np.int64)})["y"].tolist() == [2]


# --- on a GPU -----------------------------------------------------------------------------


@needs_cuda
def test_cuda_instance_runs_on_cuda(add_sub: Path) -> None:
    specs = [InstanceSpec(kind="gpu"), InstanceSpec(kind="cpu")]
    model = OnnxModel.load(add_sub, specs, RuntimeOptions(device="cuda"), name="m_1")
    assert [i.device for i in model.instances] == ["cuda", "cpu"]
    assert model.instances[0].providers[0] == CUDA
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    for instance in model.instances:
        np.testing.assert_array_equal(instance.run({"INPUT0": a, "INPUT1": a})["OUTPUT0"], a + a)
