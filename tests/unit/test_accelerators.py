"""CUDA execution provider options from a model config (repository/accelerators.py)."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from ortserve.errors import ModelLoadError
from ortserve.repository.accelerators import cuda_provider_options, unhonoured_accelerators
from ortserve.repository.model import MODEL_PARAMETERS, instance_specs
from ortserve.repository.model_config import unhonoured_fields
from ortserve.runtime.providers import CPU, CUDA, choose_providers
from ortserve_client.proto import model_config_pb2 as mc


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse('name: "m"\n' + text, mc.ModelConfig())


CUDA_ACCELERATOR = """
optimization { execution_accelerators { gpu_execution_accelerator: [ {
  name: "cuda"
  parameters { key: "cudnn_conv_algo_search" value: "heuristic" }
  parameters { key: "cudnn_conv_use_max_workspace" value: "0" }
} ] } }
"""


def test_no_options_by_default() -> None:
    assert cuda_provider_options("m", config("")) == {}


def test_the_accelerator_form_passes_options_through_and_names_the_search() -> None:
    assert cuda_provider_options("m", config(CUDA_ACCELERATOR)) == {
        "cudnn_conv_algo_search": "HEURISTIC",
        "cudnn_conv_use_max_workspace": "0",
    }


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("cudnn_conv_algo_search", "0", "EXHAUSTIVE"),
        ("cudnn_conv_algo_search", "1", "HEURISTIC"),
        ("cudnn_conv_algo_search", "2", "DEFAULT"),
        ("arena_extend_strategy", "1", "kSameAsRequested"),
        ("gpu_mem_limit", "4294967296", "4294967296"),
        ("do_copy_in_default_stream", "0", "0"),
    ],
)
def test_the_deprecated_parameters_use_tritons_values(key: str, value: str, expected: str) -> None:
    text = f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
    assert cuda_provider_options("m", config(text)) == {key: expected}
    assert key in MODEL_PARAMETERS  # not warned about as an unknown parameter


def test_the_accelerator_form_wins_over_the_deprecated_one() -> None:
    text = CUDA_ACCELERATOR + 'parameters { key: "cudnn_conv_algo_search" value: { string_value: "2" } }'
    assert cuda_provider_options("m", config(text))["cudnn_conv_algo_search"] == "HEURISTIC"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('parameters { key: "cudnn_conv_algo_search" value: { string_value: "7" } }', "is not one of EXHAUSTIVE"),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "cuda" '
            'parameters { key: "device_id" value: "1" } } ] } }',
            "instance_group's `gpus`",
        ),
        (
            'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "cuda" '
            'parameters { key: "gpu_mem_limit" value: " " } } ] } }',
            "'gpu_mem_limit' has an empty value",
        ),
    ],
)
def test_bad_options_fail_the_load_with_a_fix(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match="model 'm'") as err:
        cuda_provider_options("m", config(text))
    assert message in str(err.value)


def test_other_accelerators_are_reported_as_not_honoured() -> None:
    text = """
    optimization { execution_accelerators {
      gpu_execution_accelerator: [ { name: "tensorrt" }, { name: "cuda" } ]
      cpu_execution_accelerator: [ { name: "openvino" } ]
    } }
    """
    expected = [
        "optimization.execution_accelerators.gpu_execution_accelerator[0] ('tensorrt')",
        "optimization.execution_accelerators.cpu_execution_accelerator[0] ('openvino')",
    ]
    assert unhonoured_accelerators(config(text)) == expected
    assert unhonoured_fields(config(text)) == expected
    assert unhonoured_fields(config(CUDA_ACCELERATOR)) == []


def test_every_instance_carries_the_options_into_the_cuda_provider_only() -> None:
    specs = instance_specs(config(CUDA_ACCELERATOR + "instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]"))
    assert [s.gpu_id for s in specs] == [0, 1]
    for spec in specs:
        providers = choose_providers("cuda", spec.kind, spec.gpu_id, [CUDA, CPU], dict(spec.cuda_options))
        assert providers == [
            (
                CUDA,
                {"cudnn_conv_algo_search": "HEURISTIC", "cudnn_conv_use_max_workspace": "0", "device_id": spec.gpu_id},
            ),
            CPU,
        ]
        assert choose_providers("cpu", spec.kind, spec.gpu_id, [CUDA, CPU], dict(spec.cuda_options)) == [CPU]
