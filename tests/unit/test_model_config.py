"""config.pbtxt parsing, unhonoured-field reporting and auto-completion against the ONNX graph."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from google.protobuf import text_format

from ortserve.errors import ModelLoadError
from ortserve.repository.model_config import (
    GraphTensor,
    complete_config,
    config_text,
    read_config,
    unhonoured_fields,
)
from ortserve_client.proto import model_config_pb2 as mc

ADD_SUB_IN = [GraphTensor("INPUT0", "FP32", (-1, 16)), GraphTensor("INPUT1", "FP32", (-1, 16))]
ADD_SUB_OUT = [GraphTensor("OUTPUT0", "FP32", (-1, 16)), GraphTensor("OUTPUT1", "FP32", (-1, 16))]


def model_dir(tmp_path: Path, text: str | bytes | None, name: str = "add_sub") -> Path:
    """<tmp>/<name>/ with config.pbtxt holding `text` (none when None) and a version 1 dir."""
    directory = tmp_path / name
    (directory / "1").mkdir(parents=True)
    if isinstance(text, str):
        (directory / "config.pbtxt").write_text(text)
    elif isinstance(text, bytes):
        (directory / "config.pbtxt").write_bytes(text)
    return directory


def parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


def complete(
    config: mc.ModelConfig | str,
    inputs: list[GraphTensor] = ADD_SUB_IN,
    outputs: list[GraphTensor] = ADD_SUB_OUT,
    *,
    name: str = "add_sub",
    default_max_batch_size: int = 4,
) -> mc.ModelConfig:
    if isinstance(config, str):
        config = parse(config)
    return complete_config(config, name, inputs, outputs, default_max_batch_size=default_max_batch_size)


def io(config: mc.ModelConfig) -> dict[str, tuple[str, list[int]]]:
    """name -> (TYPE_x, dims) for every input and output, in config order."""
    tensors = list(config.input) + list(config.output)
    return {t.name: (mc.DataType.Name(t.data_type), list(t.dims)) for t in tensors}


# -- read_config --------------------------------------------------------------------------------

TRITON_CONFIG = """
name: "add_sub"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { specific: { versions: [1, 3] } }
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [4, 8] max_queue_delay_microseconds: 100 }
parameters { key: "queue_limit" value: { string_value: "64" } }
"""


def test_absent_config_is_empty(tmp_path: Path) -> None:
    assert read_config(model_dir(tmp_path, None)) == mc.ModelConfig()


def test_empty_config_file_is_empty(tmp_path: Path) -> None:
    assert read_config(model_dir(tmp_path, "")) == mc.ModelConfig()


def test_triton_config_parses(tmp_path: Path) -> None:
    config = read_config(model_dir(tmp_path, TRITON_CONFIG))
    assert config.name == "add_sub"
    assert config.max_batch_size == 8
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("INPUT0", mc.TYPE_FP32, [16]),
        ("INPUT1", mc.TYPE_FP32, [16]),
    ]
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.parameters["queue_limit"].string_value == "64"


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, 'name: "add_sub"\nmax_batch_size: 8\ninput [ { name: "INPUT0" ]\n')
    with pytest.raises(ModelLoadError) as caught:
        read_config(directory)
    message = str(caught.value)
    assert "model 'add_sub'" in message
    assert str(directory / "config.pbtxt") in message
    assert "line 3, column" in message


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    directory = model_dir(tmp_path, 'name: "add_sub"\nmax_batch_sise: 8\n')
    with pytest.raises(ModelLoadError, match=r"line 2, column 1: .*max_batch_sise"):
        read_config(directory)


def test_name_must_match_directory(tmp_path: Path) -> None:
    expected = r"model 'add_sub': .* says name \"resnet\"; expected .*'add_sub'$"
    with pytest.raises(ModelLoadError, match=expected):
        read_config(model_dir(tmp_path, 'name: "resnet"'))


def test_unreadable_bytes_are_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read"):
        read_config(model_dir(tmp_path, b'name: "\xff\xfe"'))


@pytest.mark.parametrize("filename", ["../../secret.onnx", "/etc/passwd", "sub/model.onnx", ".."])
def test_model_filename_must_stay_in_version_dir(tmp_path: Path, filename: str) -> None:
    with pytest.raises(ModelLoadError, match="default_model_filename .* is not a plain file name"):
        read_config(model_dir(tmp_path, f'default_model_filename: "{filename}"'))


def test_custom_model_filename_is_kept(tmp_path: Path) -> None:
    config = read_config(model_dir(tmp_path, 'default_model_filename: "resnet50.onnx"'))
    assert complete(config).default_model_filename == "resnet50.onnx"


# -- unhonoured_fields --------------------------------------------------------------------------


def test_honoured_config_reports_nothing() -> None:
    config = parse(TRITON_CONFIG)
    config.input[0].format = mc.ModelInput.FORMAT_NCHW
    config.instance_group[0].gpus.append(0)
    config.instance_group[0].name = "cpus"
    config.backend = "onnxruntime"
    config.default_model_filename = "m.onnx"
    assert unhonoured_fields(config) == []


def test_every_dynamic_batching_field_is_honoured() -> None:
    config = parse(
        """
        max_batch_size: 8
        dynamic_batching {
          preferred_batch_size: [4] max_queue_delay_microseconds: 100 preserve_ordering: true
          priority_levels: 2 default_priority_level: 1
          default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5
                                 allow_timeout_override: true max_queue_size: 9 }
          priority_queue_policy { key: 1 value: { max_queue_size: 3 } }
        }
        version_policy: { latest: { num_versions: 2 } }
        """
    )
    assert unhonoured_fields(config) == []


def test_unhonoured_fields_are_reported_by_path() -> None:
    config = parse(
        """
        name: "add_sub"
        max_batch_size: 8
        input [
          { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] reshape: { shape: [ 4, 4 ] } },
          { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] optional: true }
        ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] label_filename: "labels.txt" } ]
        optimization { cuda { graphs: true busy_wait_events: true } }
        sequence_batching { max_sequence_idle_microseconds: 5000000 }
        instance_group [ { count: 1 kind: KIND_CPU }, { count: 1 kind: KIND_GPU host_policy: "numa0" } ]
        model_warmup [ { name: "zeros" batch_size: 1 } ]
        response_cache { enable: true }
        """
    )
    assert unhonoured_fields(config) == [
        "input[0].reshape",
        "input[1].optional",
        "output[0].label_filename",
        "instance_group[1].host_policy",
        "optimization.cuda.graphs",
        "optimization.cuda.busy_wait_events",
        "sequence_batching",
    ]


def test_model_warmup_and_response_cache_are_honoured() -> None:
    config = parse(
        """
        model_warmup [ {
          name: "typical" batch_size: 2 count: 3
          inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 3 ] random_data: true } }
          inputs { key: "y" value: { data_type: TYPE_INT64 dims: [ 1 ] input_data_file: "y.bin" } }
          inputs { key: "z" value: { data_type: TYPE_BOOL dims: [ 1 ] zero_data: true } }
        } ]
        response_cache { enable: true }
        """
    )
    assert unhonoured_fields(config) == []


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('cc_model_filenames { key: "7.5" value: "m.onnx" }', "cc_model_filenames"),
        ('metric_tags { key: "team" value: "vision" }', "metric_tags"),
        ("model_transaction_policy { decoupled: true }", "model_transaction_policy"),
        ('batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" } ]', "batch_input"),
        ("optimization { graph { level: 1 } }", "optimization.graph"),
        ("optimization { input_pinned_memory { enable: true } }", "optimization.input_pinned_memory"),
        ('ensemble_scheduling { step [ { model_name: "a" } ] }', "ensemble_scheduling"),
        ("instance_group [ { rate_limiter { priority: 2 } } ]", "instance_group[0].rate_limiter"),
        ('input [ { name: "x" is_shape_tensor: true } ]', "input[0].is_shape_tensor"),
    ],
)
def test_each_unhonoured_field_alone(text: str, path: str) -> None:
    assert unhonoured_fields(parse(text)) == [path]


def test_every_unlisted_top_level_field_is_reported() -> None:
    # Reflection, not a list: set each message-typed top-level field the server ignores.
    ignored = {"optimization"}  # descended into, so an empty one reports nothing
    honoured = {"version_policy", "dynamic_batching", "input", "output", "instance_group", "parameters",
                "model_warmup", "response_cache"}
    for field in mc.ModelConfig.DESCRIPTOR.fields:
        if field.message_type is None or field.name in honoured | ignored:
            continue
        config = mc.ModelConfig()
        if field.message_type.GetOptions().map_entry:
            getattr(config, field.name)["k"]  # noqa: B018 - touching a map key adds the entry
            if not getattr(config, field.name):
                getattr(config, field.name)["k"] = "v"
        elif field.is_repeated:
            getattr(config, field.name).add()
        else:
            getattr(config, field.name).SetInParent()
        assert unhonoured_fields(config) == [field.name], field.name


# -- complete_config: batching ------------------------------------------------------------------


def test_autocomplete_batchable_graph() -> None:
    config = complete(mc.ModelConfig(), default_max_batch_size=32)
    assert config.name == "add_sub"
    assert config.platform == "onnxruntime_onnx"
    assert config.backend == "onnxruntime"
    assert config.default_model_filename == "model.onnx"
    assert config.max_batch_size == 32
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching == mc.ModelDynamicBatching()
    assert io(config) == {
        "INPUT0": ("TYPE_FP32", [16]),
        "INPUT1": ("TYPE_FP32", [16]),
        "OUTPUT0": ("TYPE_FP32", [16]),
        "OUTPUT1": ("TYPE_FP32", [16]),
    }
    assert config.version_policy.latest.num_versions == 1


def test_autocomplete_fixed_first_dim_is_not_batched() -> None:
    inputs = [GraphTensor("x", "INT64", (3, 4))]
    outputs = [GraphTensor("y", "INT64", (3, 4))]
    config = complete(mc.ModelConfig(), inputs, outputs)
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert io(config) == {"x": ("TYPE_INT64", [3, 4]), "y": ("TYPE_INT64", [3, 4])}


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        ([GraphTensor("x", "FP32", (-1, 4))], [GraphTensor("y", "FP32", (1, 4))]),  # one fixed output
        ([GraphTensor("x", "FP32", ())], [GraphTensor("y", "FP32", (-1,))]),  # a scalar input
        ([], [GraphTensor("y", "FP32", (-1, 4))]),  # nothing to batch on
    ],
)
def test_autocomplete_needs_every_tensor_batchable(
    inputs: list[GraphTensor], outputs: list[GraphTensor]
) -> None:
    config = complete(mc.ModelConfig(), inputs, outputs)
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")


def test_autocomplete_without_default_batch_size_does_not_batch() -> None:
    config = complete(mc.ModelConfig(), default_max_batch_size=0)
    assert config.max_batch_size == 0
    assert io(config)["INPUT0"] == ("TYPE_FP32", [-1, 16])


def test_autocomplete_keeps_the_users_scheduler() -> None:
    config = complete("sequence_batching { max_sequence_idle_microseconds: 100 }")
    assert config.max_batch_size == 4
    assert config.WhichOneof("scheduling_choice") == "sequence_batching"
    assert config.sequence_batching.max_sequence_idle_microseconds == 100


def test_autocomplete_keeps_the_users_dynamic_batching() -> None:
    config = complete("dynamic_batching { max_queue_delay_microseconds: 250 }", default_max_batch_size=16)
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 250


def test_listed_inputs_with_zero_max_batch_size_stay_unbatched() -> None:
    config = complete('input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 16 ] } ]')
    assert config.max_batch_size == 0
    assert not config.HasField("dynamic_batching")
    assert io(config)["INPUT0"] == ("TYPE_FP32", [-1, 16])
    assert io(config)["INPUT1"] == ("TYPE_FP32", [-1, 16])


def test_explicit_max_batch_size_is_honoured() -> None:
    config = complete("max_batch_size: 64")
    assert config.max_batch_size == 64
    assert not config.HasField("dynamic_batching")  # the user chose no scheduler
    assert io(config)["OUTPUT1"] == ("TYPE_FP32", [16])


def test_explicit_max_batch_size_on_fixed_first_dim_is_an_error() -> None:
    inputs = [GraphTensor("x", "FP32", (-1, 4))]
    outputs = [GraphTensor("y", "FP32", (2, 4))]
    with pytest.raises(
        ModelLoadError, match=re.escape("model 'm': max_batch_size 8 needs a variable (-1) first dim")
    ) as caught:
        complete("max_batch_size: 8", inputs, outputs, name="m")
    assert "output 'y' [2,4]" in str(caught.value)
    assert "input 'x'" not in str(caught.value)


def test_negative_max_batch_size_is_an_error() -> None:
    with pytest.raises(ModelLoadError, match="max_batch_size is -2"):
        complete("max_batch_size: -2")


# -- complete_config: tensors -------------------------------------------------------------------


def test_declared_tensors_checked_and_missing_ones_added() -> None:
    config = complete(
        """
        max_batch_size: 8
        input [ { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        output [ { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] } ]
        """
    )
    assert [t.name for t in config.input] == ["INPUT1", "INPUT0"]  # declared first, then the graph's
    assert [t.name for t in config.output] == ["OUTPUT1", "OUTPUT0"]
    assert io(config)["INPUT0"] == ("TYPE_FP32", [16])


def test_unknown_tensor_name_lists_the_graphs_names() -> None:
    with pytest.raises(ModelLoadError) as caught:
        complete('input [ { name: "INPUT9" data_type: TYPE_FP32 dims: [ -1, 16 ] } ]')
    assert str(caught.value) == (
        "model 'add_sub' input 'INPUT9': not in the ONNX graph; "
        "expected one of the graph's inputs ['INPUT0', 'INPUT1']"
    )


def test_unknown_output_name() -> None:
    with pytest.raises(ModelLoadError, match=r"output 'prob': not in the ONNX graph.*'OUTPUT0', 'OUTPUT1'"):
        complete('output [ { name: "prob" data_type: TYPE_FP32 dims: [ -1, 16 ] } ]')


def test_data_type_mismatch() -> None:
    inputs = [GraphTensor("x", "FP32", (-1, 3, 224, 224))]
    outputs = [GraphTensor("y", "FP32", (-1, 1000))]
    with pytest.raises(ModelLoadError) as caught:
        complete(
            'max_batch_size: 8 input [ { name: "x" data_type: TYPE_FP16 dims: [3, 224, 224] } ]',
            inputs,
            outputs,
            name="resnet",
        )
    assert str(caught.value) == "model 'resnet' input 'x': config says TYPE_FP16 but the ONNX graph has FP32"


@pytest.mark.parametrize(
    ("dims", "why"),
    [
        ("[ 15 ]", "[15] but the ONNX graph has [16]"),
        ("[ 4, 4 ]", "[4,4] but the ONNX graph has [16]"),
        ("[ -1, 16 ]", "(the batch dim left out, as max_batch_size > 0)"),  # batch dim given by mistake
    ],
)
def test_dims_mismatch(dims: str, why: str) -> None:
    text = f'max_batch_size: 8 input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: {dims} }} ]'
    with pytest.raises(ModelLoadError, match=r"model 'add_sub' input 'INPUT0': config says dims ") as caught:
        complete(text)
    assert why in str(caught.value)


def test_zero_dim_is_an_error() -> None:
    with pytest.raises(ModelLoadError, match=r"dims \[0\] hold 0; expected each dim >= 1, or -1"):
        complete('max_batch_size: 8 input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 0 ] } ]')


def test_dims_keep_the_most_specific_of_config_and_graph() -> None:
    inputs = [GraphTensor("x", "FP32", (-1, -1, 4))]
    outputs = [GraphTensor("y", "FP32", (-1, 7, -1))]
    config = complete(
        """
        max_batch_size: 2
        input [ { name: "x" data_type: TYPE_FP32 dims: [ 9, -1 ] } ]
        output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, -1 ] } ]
        """,
        inputs,
        outputs,
    )
    assert io(config) == {"x": ("TYPE_FP32", [9, 4]), "y": ("TYPE_FP32", [7, -1])}


def test_missing_type_and_dims_are_taken_from_the_graph() -> None:
    config = complete('max_batch_size: 8 input [ { name: "INPUT0" } ]')
    assert io(config)["INPUT0"] == ("TYPE_FP32", [16])


def test_declared_twice_is_an_error() -> None:
    text = 'input [ { name: "INPUT0" data_type: TYPE_FP32 }, { name: "INPUT0" data_type: TYPE_FP32 } ]'
    with pytest.raises(ModelLoadError, match="input 'INPUT0': declared twice"):
        complete(text)


def test_bytes_graph_tensor_is_type_string() -> None:
    inputs = [GraphTensor("text", "BYTES", (-1,))]
    outputs = [GraphTensor("tokens", "INT32", (-1, -1))]
    config = complete(mc.ModelConfig(), inputs, outputs, name="tok")
    assert io(config) == {"text": ("TYPE_STRING", []), "tokens": ("TYPE_INT32", [-1])}


def test_unservable_graph_type_is_an_error() -> None:
    inputs = [GraphTensor("x", "BF16", (-1, 4))]
    with pytest.raises(ModelLoadError, match=r"input 'x': the ONNX graph has type BF16, which this server"):
        complete(mc.ModelConfig(), inputs, ADD_SUB_OUT)


# -- complete_config: identity, instance groups, dynamic batching -------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('platform: "tensorflow_savedmodel"', 'platform "tensorflow_savedmodel" but this server runs ONNX'),
        ('backend: "pytorch"', 'backend "pytorch" but this server runs ONNX models only'),
        ('name: "other"', "config says name \"other\"; expected 'add_sub'"),
    ],
)
def test_foreign_identity_is_an_error(text: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(match)):
        complete(text)


def test_onnx_platform_and_backend_are_accepted() -> None:
    config = complete('platform: "onnxruntime_onnx" backend: "onnxruntime"')
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")


def test_default_instance_group() -> None:
    groups = complete(mc.ModelConfig()).instance_group
    assert len(groups) == 1
    group = groups[0]
    assert (group.name, group.kind, group.count) == ("add_sub", mc.ModelInstanceGroup.KIND_AUTO, 1)


def test_instance_groups_completed() -> None:
    config = complete(
        'instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_GPU gpus: [ 0 ] }, { name: "g" } ]'
    )
    assert [(g.name, g.kind, g.count, list(g.gpus)) for g in config.instance_group] == [
        ("add_sub_0", mc.ModelInstanceGroup.KIND_CPU, 2, []),
        ("add_sub_1", mc.ModelInstanceGroup.KIND_GPU, 1, [0]),
        ("g", mc.ModelInstanceGroup.KIND_AUTO, 1, []),
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("instance_group [ { count: -1 } ]", "instance_group 'add_sub_0': count is -1"),
        ("instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]", "kind KIND_CPU lists gpus [0]"),
        ("instance_group [ { kind: KIND_GPU gpus: [ -1 ] } ]", "expected device ids >= 0"),
    ],
)
def test_bad_instance_group(text: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(match)):
        complete(text)


def test_preferred_batch_sizes_within_max_are_kept() -> None:
    config = complete("max_batch_size: 8 dynamic_batching { preferred_batch_size: [4, 8] }")
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]


@pytest.mark.parametrize("size", [16, 0])
def test_preferred_batch_size_out_of_range(size: int) -> None:
    text = f"max_batch_size: 8 dynamic_batching {{ preferred_batch_size: [4, {size}] }}"
    with pytest.raises(ModelLoadError, match=rf"preferred_batch_size {size}; expected 1 to max_batch_size 8"):
        complete(text)


def test_dynamic_batching_without_batch_dim_is_an_error() -> None:
    text = 'input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1, 16 ] } ] dynamic_batching { }'
    with pytest.raises(ModelLoadError, match="dynamic_batching is set but max_batch_size is 0"):
        complete(text)


@pytest.mark.parametrize(
    ("batching", "match"),
    [
        ("priority_levels: 2", "default_priority_level 0; expected 1 to priority_levels 2"),
        ("priority_levels: 2 default_priority_level: 3", "default_priority_level 3"),
        (
            "priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value: {} }",
            "priority_queue_policy for level 3",
        ),
        ("priority_levels: 2 default_priority_level: 1 preserve_ordering: true", "preserve_ordering"),
    ],
)
def test_bad_priority_levels(batching: str, match: str) -> None:
    with pytest.raises(ModelLoadError, match=re.escape(match)):
        complete(f"max_batch_size: 8 dynamic_batching {{ {batching} }}")


def test_valid_priority_levels() -> None:
    config = complete(
        "max_batch_size: 8 dynamic_batching { priority_levels: 3 default_priority_level: 2 "
        "priority_queue_policy { key: 1 value: { max_queue_size: 4 } } }"
    )
    assert config.dynamic_batching.priority_queue_policy[1].max_queue_size == 4


def test_argument_is_not_mutated_and_other_fields_are_kept() -> None:
    original = parse(
        """
        max_batch_size: 8
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
        instance_group [ { count: 0 } ]
        optimization { cuda { graphs: true } }
        parameters { key: "queue_limit" value: { string_value: "64" } }
        model_warmup [ { name: "zeros" batch_size: 1 } ]
        """
    )
    snapshot = mc.ModelConfig()
    snapshot.CopyFrom(original)
    config = complete(original)
    assert original == snapshot
    assert config is not original
    assert config.optimization.cuda.graphs
    assert config.parameters["queue_limit"].string_value == "64"
    assert config.model_warmup[0].name == "zeros"
    assert config.instance_group[0].count == 1
    assert list(config.input[0].dims) == [16]


def test_version_policy_set_by_the_user_is_kept() -> None:
    config = complete("version_policy: { all: {} }")
    assert config.version_policy.WhichOneof("policy_choice") == "all"


def test_config_text_round_trips() -> None:
    config = complete(parse(TRITON_CONFIG))
    assert parse(config_text(config)) == config
    assert 'name: "add_sub"' in config_text(config)


def test_read_then_complete(tmp_path: Path) -> None:
    config = complete(read_config(model_dir(tmp_path, TRITON_CONFIG)))
    assert config.max_batch_size == 8
    assert [t.name for t in config.output] == ["OUTPUT0", "OUTPUT1"]
    assert [(g.name, g.count) for g in config.instance_group] == [("add_sub_0", 2)]
