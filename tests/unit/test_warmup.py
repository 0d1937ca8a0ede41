"""Warm-up: model_warmup samples from the config, and the runs a version makes before it serves."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format

from ortserve.errors import ModelLoadError
from ortserve.repository import ModelVersion, Signature
from ortserve.repository.warmup import warmup_samples
from ortserve_client.proto import model_config_pb2 as mc

Array = np.ndarray[Any, Any]

MODEL = """
name: "m"
max_batch_size: 8
input [
  { name: "x" data_type: TYPE_FP32 dims: [ 3 ] },
  { name: "n" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "t" data_type: TYPE_STRING dims: [ 2 ] },
  { name: "b" data_type: TYPE_BOOL dims: [ 1 ] }
]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 6 ] }
"""


def config(extra: str = "", base: str = MODEL) -> mc.ModelConfig:
    return text_format.Parse(base + extra, mc.ModelConfig())


def samples(extra: str, model_dir: Path, base: str = MODEL) -> list[Any]:
    parsed = config(extra, base)
    return warmup_samples(parsed, Signature.from_config(parsed), model_dir)


ALL_INPUTS = """
model_warmup [ {
  name: "mixed" batch_size: 3 count: 2
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3 ] input_data_file: "x.bin" } }
  inputs { key: "n" value: { data_type: TYPE_INT64 dims: [ 5 ] random_data: true } }
  inputs { key: "t" value: { data_type: TYPE_STRING dims: [ 2 ] input_data_file: "t.bin" } }
  inputs { key: "b" value: { data_type: TYPE_BOOL dims: [ 1 ] zero_data: true } }
} ]
"""


def write_data(model_dir: Path) -> None:
    (model_dir / "warmup").mkdir(parents=True)
    (model_dir / "warmup" / "x.bin").write_bytes(np.array([1.5, -2, 3], np.float32).tobytes())
    (model_dir / "warmup" / "t.bin").write_bytes(b"".join(struct.pack("<I", len(s)) + s for s in (b"hi", b"")))


def test_each_kind_of_data_repeated_for_every_row(tmp_path: Path) -> None:
    write_data(tmp_path)
    (sample,) = samples(ALL_INPUTS, tmp_path)
    assert (sample.name, sample.rows, sample.count) == ("mixed", 3, 2)
    np.testing.assert_array_equal(sample.feeds["x"], [[1.5, -2, 3]] * 3)
    assert sample.feeds["x"].dtype == np.float32
    n = sample.feeds["n"]
    assert n.shape == (3, 5) and n.dtype == np.int64 and (0 <= n).all() and (n < 10).all()
    assert (n == n[0]).all()  # one row, repeated
    assert sample.feeds["t"].tolist() == [[b"hi", b""]] * 3
    np.testing.assert_array_equal(sample.feeds["b"], np.zeros((3, 1), bool))


def test_random_data_is_the_same_at_every_load(tmp_path: Path) -> None:
    write_data(tmp_path)
    first, second = samples(ALL_INPUTS, tmp_path)[0], samples(ALL_INPUTS, tmp_path)[0]
    np.testing.assert_array_equal(first.feeds["n"], second.feeds["n"])


def test_count_zero_means_once_and_a_model_without_batch_dim_takes_batch_size_0(tmp_path: Path) -> None:
    base = (
        'name: "m" input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]\n'
        'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2, 2 ] } ]\n'
    )
    (sample,) = samples(
        'model_warmup [ { inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 2, 2 ] zero_data: true } } } ]',
        tmp_path, base,
    )
    assert (sample.name, sample.rows, sample.count) == ("#0", 1, 1)
    assert sample.feeds["x"].shape == (2, 2)


def entry(inputs: str, head: str = 'name: "s" batch_size: 1') -> str:
    return f"model_warmup [ {{ {head} {inputs} }} ]"


X = 'inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3 ] zero_data: true } }'
REST = (
    'inputs { key: "n" value: { data_type: TYPE_INT64 dims: [ 1 ] zero_data: true } }'
    'inputs { key: "t" value: { data_type: TYPE_STRING dims: [ 2 ] zero_data: true } }'
    'inputs { key: "b" value: { data_type: TYPE_BOOL dims: [ 1 ] zero_data: true } }'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (entry(X + REST, 'name: "s" batch_size: 9'), "batch_size 9; expected 1 to max_batch_size 8"),
        (entry(X + REST, 'name: "s"'), "batch_size 0; expected 1 to max_batch_size 8"),
        (entry(REST), "input 'x' is missing"),
        (entry(X + REST + 'inputs { key: "q" value: { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true } }'),
         "the model has no input 'q'"),
        (entry(X.replace("TYPE_FP32", "TYPE_FP64") + REST), "data_type TYPE_FP64; expected the model's TYPE_FP32"),
        (entry(X.replace("[ 3 ]", "[ 4 ]") + REST), r"dims \[4\]; expected concrete dims fitting the model's \[3\]"),
        (entry(X.replace("[ 3 ]", "[ -1 ]") + REST), r"dims \[-1\]"),
        (entry(X.replace("zero_data: true", 'input_data_file: "../x.bin"') + REST),
         "not a relative path inside warmup/"),
        (entry(X.replace("zero_data: true", 'input_data_file: "/etc/passwd"') + REST), "not a relative path"),
        (entry(X.replace("zero_data: true", 'input_data_file: "missing.bin"') + REST), "cannot read input_data_file"),
        (entry(X.replace("zero_data: true", 'input_data_file: "short.bin"') + REST), "holds 4 bytes; expected 12"),
        (entry(X + REST.replace('dims: [ 2 ] zero_data: true', 'dims: [ 2 ] input_data_file: "t1.bin"')),
         "holds 1 BYTES elements; expected 2"),
        (entry(X + REST.replace('dims: [ 2 ] zero_data: true', 'dims: [ 2 ] input_data_file: "cut.bin"')),
         "ends inside element 0"),
    ],
)
def test_bad_samples_fail_the_load_naming_sample_and_input(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "warmup").mkdir()
    (tmp_path / "warmup" / "short.bin").write_bytes(b"\0" * 4)
    (tmp_path / "warmup" / "t1.bin").write_bytes(struct.pack("<I", 1) + b"a")
    (tmp_path / "warmup" / "cut.bin").write_bytes(struct.pack("<I", 9) + b"abc")
    with pytest.raises(ModelLoadError, match=r"model 'm' model_warmup 's'.*" + message):
        samples(text, tmp_path)


class RecordingInstance:
    """Stands in for a runtime instance: records the batch size of every run."""

    name = "m_1_0"
    device = "cpu"

    def __init__(self) -> None:
        self.rows: list[int] = []

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        self.rows.append(len(feeds["x"]))
        return {"y": np.zeros((len(feeds["x"]), 3), np.float32)}


class FakeModel:
    def __init__(self, instances: int) -> None:
        self.instances = [RecordingInstance() for _ in range(instances)]


def test_default_warm_up_runs_each_batch_size_the_batcher_forms_then_the_samples(tmp_path: Path) -> None:
    write_data(tmp_path)
    parsed = config(ALL_INPUTS)
    onnx = FakeModel(2)
    version = ModelVersion("m", 1, parsed, onnx)  # type: ignore[arg-type]
    version.warm_up(warmup_samples(parsed, version.signature, tmp_path))
    for instance in onnx.instances:
        # 1, the preferred sizes and max_batch_size, twice each (the second timed), then the sample twice.
        assert instance.rows == [1, 1, 4, 4, 6, 6, 8, 8, 3, 3]


def test_a_failing_warm_up_sample_fails_the_load(tmp_path: Path) -> None:
    write_data(tmp_path)
    parsed = config(ALL_INPUTS)

    class Failing(RecordingInstance):
        def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
            if len(feeds["x"]) == 3:
                raise RuntimeError("boom")
            return super().run(feeds)

    onnx = FakeModel(1)
    onnx.instances = [Failing()]
    version = ModelVersion("m", 1, parsed, onnx)  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match="model_warmup 'mixed' failed on instance m_1_0: boom"):
        version.warm_up(warmup_samples(parsed, version.signature, tmp_path))


def test_warm_up_runs_every_batch_shape_of_a_cuda_model() -> None:
    """On CUDA, "auto" batch shapes (max_batch_size 8: 1 2 4 8) are each run before traffic."""
    onnx = FakeModel(1)
    onnx.instances[0].device = "cuda"
    version = ModelVersion("m", 1, config(), onnx)  # type: ignore[arg-type]
    assert version.batcher.policy.batch_shapes == (1, 2, 4, 8)
    version.warm_up()
    # Each size twice (6: a preferred size), then the largest two once more: changes of shape,
    # whose extra time seeds the planner's cost of a change.
    assert onnx.instances[0].rows == [1, 1, 2, 2, 4, 4, 6, 6, 8, 8, 6, 8]


def test_the_shape_planner_learns_the_shape_the_warm_up_samples_left_the_session_at(tmp_path: Path) -> None:
    """The samples (batch_size 3) run last: a first batch of 8 rows is a change of shape, not a
    second run at 8, so it must not pass for 8 rows' run time."""
    write_data(tmp_path)
    parsed = config(ALL_INPUTS)
    onnx = FakeModel(1)
    onnx.instances[0].device = "cuda"
    version = ModelVersion("m", 1, parsed, onnx)  # type: ignore[arg-type]
    version.warm_up(warmup_samples(parsed, version.signature, tmp_path))
    planner = version.batcher.planner(0)
    assert onnx.instances[0].rows[-2:] == [3, 3]
    before = planner.cost_ns(8)
    planner.observe(8, 10**12)  # a huge run at 8 right after the samples
    assert planner.cost_ns(8) == before  # counted as a change, not as 8 rows' time
