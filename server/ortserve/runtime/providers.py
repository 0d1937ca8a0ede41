"""Execution provider choice: which ONNX Runtime providers a session is created with.

Pure functions over names, so the choice is testable without a GPU or onnxruntime itself:
the caller passes the providers its onnxruntime build offers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ortserve.errors import ModelLoadError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

DEVICES = ("auto", "cpu", "cuda")
"""Server-wide device choices (the `--device` flag)."""
KINDS = ("auto", "cpu", "gpu")
"""Instance kinds (Triton's instance_group KIND_AUTO / KIND_CPU / KIND_GPU, lower-cased)."""

Provider = str | tuple[str, dict[str, Any]]
"""One entry of InferenceSession's `providers` argument: a name, or a name with its options."""


def choose_providers(
    device: str,
    kind: str,
    gpu_id: int,
    available: Sequence[str],
    cuda_options: Mapping[str, str] | None = None,
) -> list[str | tuple[str, dict[str, Any]]]:
    """The providers list for an InferenceSession, most preferred first.

    `cuda_options` are extra CUDA execution provider options (e.g. cudnn_conv_algo_search), used
    only where CUDA is chosen; `device_id` is always `gpu_id`.

    - kind "cpu" or device "cpu": CPU only.
    - device "cuda": CUDA on `gpu_id`, then CPU for the nodes CUDA cannot run; ModelLoadError
      when this onnxruntime build has no CUDA provider.
    - device "auto" (kind "auto" or "gpu"): CUDA then CPU when CUDA is available, else CPU only.
      The caller logs that fallback; this function stays pure.

    CPU always comes last: ONNX Runtime assigns each node to the first provider that can run it,
    and CUDA lacks kernels for some ops.
    """
    if device not in DEVICES:
        raise ModelLoadError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    if kind not in KINDS:
        raise ModelLoadError(f"unknown instance kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "cpu" or device == "cpu":
        return [CPU]
    if gpu_id < 0:
        raise ModelLoadError(f"gpu id must be 0 or more, got {gpu_id}")
    cuda: list[Provider] = [(CUDA, {**(cuda_options or {}), "device_id": gpu_id}), CPU]
    if CUDA in available:
        return cuda
    if device == "cuda":
        raise ModelLoadError(
            f"device 'cuda' was requested but this onnxruntime has no {CUDA} "
            f"(available: {', '.join(available) or 'none'}); install onnxruntime-gpu with a matching "
            "CUDA and cuDNN, or serve with --device auto or --device cpu"
        )
    return [CPU]


def provider_names(providers: Sequence[Provider]) -> list[str]:
    """The names in a providers list, options dropped."""
    return [p if isinstance(p, str) else p[0] for p in providers]


def device_of(session_providers: Sequence[str]) -> str:
    """"cuda" when a session really holds the CUDA provider, else "cpu".

    Give it `InferenceSession.get_providers()`: onnxruntime-gpu on a machine without a usable GPU
    drops CUDA quietly, so what was asked for or what is installed says nothing.
    """
    return "cuda" if CUDA in session_providers else "cpu"
