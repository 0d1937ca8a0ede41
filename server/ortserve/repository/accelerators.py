"""CUDA execution provider options from a Triton model config.

Triton's ONNX Runtime backend takes them in two forms, and so does ortserve:

    optimization { execution_accelerators { gpu_execution_accelerator: [ {
        name: "cuda"
        parameters { key: "cudnn_conv_algo_search" value: "HEURISTIC" }
    } ] } }

    parameters { key: "cudnn_conv_algo_search" value: { string_value: "1" } }   # deprecated form

Each key of the accelerator form is an option of ONNX Runtime's CUDA execution provider, passed
through as written (ONNX Runtime rejects an unknown key or value when it creates a CUDA session,
and the load fails with its message). The deprecated form knows four keys and Triton's numeric
values for them. Where both name a key, the accelerator form wins.

`cudnn_conv_algo_search` matters to a dynamic batcher: ONNX Runtime's default, EXHAUSTIVE, times
every cuDNN algorithm for each convolution at each new input shape, and a batcher forms up to
max_batch_size shapes, so a convolutional model pays that search (seconds on a ResNet-50) on the
first batch of every size it meets. HEURISTIC picks from cuDNN's heuristics without timing.

The options apply only to instances that run on CUDA; `device_id` comes from instance_group's
`gpus` and is refused here.
"""

from __future__ import annotations

from collections.abc import Mapping

from ortserve.errors import ModelLoadError
from ortserve_client.proto import model_config_pb2 as mc

CUDA_ACCELERATOR = "cuda"

CUDNN_CONV_ALGO_SEARCH = "cudnn_conv_algo_search"
_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}

DEPRECATED_PARAMETERS: Mapping[str, Mapping[str, str] | None] = {
    CUDNN_CONV_ALGO_SEARCH: _SEARCH,
    "gpu_mem_limit": None,
    "arena_extend_strategy": {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"},
    "do_copy_in_default_stream": None,
}
"""Model-level `parameters` keys Triton's backend reads as CUDA options, and their value maps."""


def cuda_provider_options(model: str, config: mc.ModelConfig) -> dict[str, str]:
    """The CUDA execution provider options `config` asks for ({} when none).

    ModelLoadError for `device_id`, an empty value, or a cudnn_conv_algo_search other than
    EXHAUSTIVE, HEURISTIC, DEFAULT or Triton's 0, 1, 2.
    """
    options: dict[str, str] = {}
    for key, values in DEPRECATED_PARAMETERS.items():
        if key in config.parameters:
            raw = config.parameters[key].string_value.strip()
            options[key] = values.get(raw, raw) if values else raw
    for accelerator in config.optimization.execution_accelerators.gpu_execution_accelerator:
        if accelerator.name == CUDA_ACCELERATOR:
            options.update({key: value.strip() for key, value in accelerator.parameters.items()})
    for key, value in options.items():
        if key == "device_id":
            raise ModelLoadError(
                f"model '{model}': the cuda accelerator's device_id is set by instance_group's `gpus`; "
                "remove it from the accelerator's parameters and write e.g. instance_group [ { gpus: [ 1 ] } ]"
            )
        if not value:
            raise ModelLoadError(
                f"model '{model}': CUDA option {key!r} has an empty value; give it a value or remove it"
            )
    search = options.get(CUDNN_CONV_ALGO_SEARCH)
    if search is not None:
        named = _SEARCH.get(search, search.upper())
        if named not in _SEARCH.values():
            raise ModelLoadError(
                f"model '{model}': cudnn_conv_algo_search {search!r} is not one of EXHAUSTIVE, HEURISTIC, "
                "DEFAULT (or Triton's 0, 1, 2)"
            )
        options[CUDNN_CONV_ALGO_SEARCH] = named
    return options


def unhonoured_accelerators(config: mc.ModelConfig) -> list[str]:
    """Paths of accelerators ortserve does not run (TensorRT, OpenVINO...), for the load's warnings."""
    policy = config.optimization.execution_accelerators
    found = [
        f"optimization.execution_accelerators.gpu_execution_accelerator[{i}] ({a.name!r})"
        for i, a in enumerate(policy.gpu_execution_accelerator)
        if a.name != CUDA_ACCELERATOR
    ]
    found += [
        f"optimization.execution_accelerators.cpu_execution_accelerator[{i}] ({a.name!r})"
        for i, a in enumerate(policy.cpu_execution_accelerator)
    ]
    return found
