"""ONNX Runtime sessions: a model file loaded as one session per instance, and the blocking run.

Loading (OnnxModel.load), in order:
1. Check the file exists, so the commonest mistake gets a plain message, not ORT's.
2. Divide the available cores among the instances (threads.threads_per_instance).
3. Per instance: choose providers (providers.choose_providers), create the session, then ask the
   session which providers it really holds; that, not what was asked for, is the instance's device.
4. Read the signature (TensorInfo) from the first session and precompute what run() needs.
Any failure releases the sessions already created and raises ModelLoadError.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from ortserve import dtypes
from ortserve.errors import InternalError, InvalidInputError, ModelLoadError
from ortserve.runtime.providers import CPU, CUDA, Provider, choose_providers, device_of, provider_names
from ortserve.runtime.threads import threads_per_instance

logger = logging.getLogger("ortserve.runtime")

Array = npt.NDArray[Any]

# Names of the onnxruntime exception classes (onnxruntime_pybind11_state) that blame the model
# file; matched by name because they are not part of onnxruntime's public API.
_MODEL_FAULTS = frozenset({"NoSuchFile", "InvalidProtobuf", "InvalidGraph"})


def _rejects_values(err: Exception) -> bool:
    """Whether a failed run is ONNX Runtime's INVALID_ARGUMENT from a node as it ran (a Gather index out
    of its table, an Expand to an impossible shape): the request's values, so INVALID_ARGUMENT for the
    caller. ORT's checks of the feeds before a run (types, names) are INVALID_ARGUMENT too, but the
    server's validation makes them first, so one failing here is the server's fault: INTERNAL, as every
    other failure (ORT's FAIL, ...)."""
    return type(err).__name__ == "InvalidArgument" and "while running" in str(err)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One input or output of a model, as its ONNX graph declares it."""

    name: str
    datatype: str
    """KServe datatype name, e.g. "FP32", "BYTES"."""
    shape: tuple[int, ...]
    """Declared dims; symbolic or unknown dims are -1."""


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One instance (session) to create: Triton's instance_group entry, one count's worth."""

    kind: str = "auto"
    """"auto" | "cpu" | "gpu" (Triton KIND_AUTO / KIND_CPU / KIND_GPU)."""
    gpu_id: int = 0
    """CUDA device ordinal, used when the instance runs on CUDA."""
    cuda_options: tuple[tuple[str, str], ...] = ()
    """Extra CUDA execution provider options (key, value), used when the instance runs on CUDA."""


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Server-wide runtime settings, validated by the config room and passed down."""

    device: str = "auto"
    """"auto" | "cpu" | "cuda"; "cuda" makes a missing or unusable CUDA a load error."""
    intra_op_threads: int = 0
    """Intra-op threads per instance; 0 divides the available cores among the model's instances."""
    allow_spinning: bool = False
    """ORT thread-pool spinning; off so that idle workers don't steal the event loop's core."""


@dataclass(frozen=True, slots=True)
class _Signature:
    """What run() needs about a model's tensors, computed once at load."""

    output_names: list[str]
    string_inputs: tuple[str, ...]
    string_outputs: tuple[str, ...]


class OrtInstance:
    """One onnxruntime.InferenceSession; used by exactly one worker thread at a time.

    Created by OnnxModel.load. `device` and `providers` are what the session really holds.
    """

    __slots__ = ("name", "device", "providers", "intra_op_threads", "_session", "_sig", "_options")

    name: str
    """e.g. "mymodel_1_0": the model name given to load, then the instance index."""
    device: str
    """"cpu" or "cuda", from session.get_providers()."""
    providers: list[str]
    """session.get_providers(): the providers the session holds, in precedence order."""
    intra_op_threads: int
    """The intra-op thread count the session was created with."""

    def __init__(self, name: str, session: Any, sig: _Signature) -> None:
        self.name = name
        self._session: Any = session
        self._sig = sig
        self.providers = list(session.get_providers())
        self.device = device_of(self.providers)
        self.intra_op_threads = int(session.get_session_options().intra_op_num_threads)
        self._options = ort.RunOptions()
        """Every run's options, one object: `stop` sets its terminate flag from another thread (and a
        run given options is ~1 us faster than one that lets ONNX Runtime make default ones)."""
        if not logger.isEnabledFor(logging.DEBUG):
            # A failed run's raw line on stderr ("[E:onnxruntime:...] Non-zero status code ...") would
            # break the JSON logs, once per failed run (a batch rerun in parts fails several): the
            # error reaches the caller, and the log when it is the server's, with ORT's message in it.
            self._options.log_severity_level = 4  # fatal only

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Run every output; blocking (ONNX Runtime releases the GIL while it computes).

        BYTES tensors are numpy object arrays of `bytes` on our side, but ONNX Runtime wants `str`
        for tensor(string) and would str() a bytes object into "b'...'", so string inputs are
        decoded (UTF-8; InvalidInputError when they are not) and string outputs encoded back.
        Any onnxruntime failure becomes InternalError naming this instance.
        """
        session = self._session
        if session is None:
            raise InternalError(f"instance '{self.name}' is closed")
        sig = self._sig
        if sig.string_inputs:
            feeds = _decode_string_feeds(feeds, sig.string_inputs)
        elif not isinstance(feeds, dict):
            feeds = dict(feeds)  # the pybind layer under session.run takes a dict only
        try:
            # The precomputed names, not None: with None, ORT rebuilds this list on every call.
            values = session.run(sig.output_names, feeds, self._options)
        except Exception as err:  # ORT's exception classes share no base but Exception
            if _rejects_values(err):
                raise InvalidInputError(
                    f"instance '{self.name}': the model cannot take the request's input values: {err} "
                    "(check them against the range the model accepts)"
                ) from err
            raise InternalError(f"instance '{self.name}': onnxruntime run failed: {err}") from err
        outputs: dict[str, Array] = dict(zip(sig.output_names, values, strict=True))
        for name in sig.string_outputs:
            outputs[name] = _encode_strings(outputs[name])
        return outputs

    def stop(self) -> None:
        """Ask the run in progress to end early: ONNX Runtime checks between nodes (and between a
        Loop's iterations) and fails the run. Every later run fails at once until `resume`.
        Callable from any thread."""
        self._options.terminate = True

    def resume(self) -> None:
        """Let runs go on again after `stop`; call it before handing the next batch to the instance."""
        self._options.terminate = False

    def close(self) -> None:
        """Release the session (ORT frees it with its last reference); idempotent."""
        self._session = None


class OnnxModel:
    """One version of an ONNX model loaded as one session per instance."""

    __slots__ = ("name", "path", "instances", "inputs", "outputs")

    name: str
    """The name given to load, used in messages and as the prefix of instance names."""
    path: Path
    instances: list[OrtInstance]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def __init__(
        self,
        name: str,
        path: Path,
        instances: list[OrtInstance],
        inputs: list[TensorInfo],
        outputs: list[TensorInfo],
    ) -> None:
        self.name = name
        self.path = path
        self.instances = instances
        self.inputs = inputs
        self.outputs = outputs

    @classmethod
    def load(
        cls, path: Path, instances: Sequence[InstanceSpec], options: RuntimeOptions, *, name: str
    ) -> OnnxModel:
        """Load `path` as one session per InstanceSpec; blocking (the caller runs it in a thread).

        `name` identifies the model version in messages and logs (e.g. "mymodel_1"); instance i
        is named f"{name}_{i}". Raises ModelLoadError with a message a user can act on.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelLoadError(f"model '{name}': model file {path} does not exist")
        if not instances:
            raise ModelLoadError(f"model '{name}': at least one instance is needed, got none")
        threads = threads_per_instance(len(instances), options.intra_op_threads)
        available = list(ort.get_available_providers())
        sessions: list[Any] = []
        try:
            for index, spec in enumerate(instances):
                sessions.append(
                    _create_session(path, spec, options, available, threads, f"{name}_{index}")
                )
            inputs = [_tensor_info(name, "input", arg) for arg in sessions[0].get_inputs()]
            outputs = [_tensor_info(name, "output", arg) for arg in sessions[0].get_outputs()]
        except BaseException:
            sessions.clear()  # drop our references: ORT releases a session with its last one
            raise
        sig = _Signature(
            output_names=[t.name for t in outputs],
            string_inputs=tuple(t.name for t in inputs if t.datatype == "BYTES"),
            string_outputs=tuple(t.name for t in outputs if t.datatype == "BYTES"),
        )
        built = [OrtInstance(f"{name}_{i}", s, sig) for i, s in enumerate(sessions)]
        return cls(name, path, built, inputs, outputs)

    def close(self) -> None:
        """Release every session; idempotent."""
        for instance in self.instances:
            instance.close()


def _session_options(threads: int, allow_spinning: bool) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # One worker thread per instance already gives concurrency between requests; a parallel
    # executor inside each session would only oversubscribe the cores divided above.
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if allow_spinning else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return so


def _create_session(
    path: Path,
    spec: InstanceSpec,
    options: RuntimeOptions,
    available: list[str],
    threads: int,
    instance: str,
) -> Any:
    """One InferenceSession on the device the spec and options call for, checked against reality."""
    try:
        providers = choose_providers(options.device, spec.kind, spec.gpu_id, available, dict(spec.cuda_options))
    except ModelLoadError as err:
        raise ModelLoadError(f"instance '{instance}': {err}") from err
    wanted_cuda = CUDA in provider_names(providers)
    if spec.kind == "gpu" and options.device == "auto" and not wanted_cuda:
        logger.warning(
            "instance '%s': KIND_GPU but this onnxruntime has no %s (available: %s); running on CPU",
            instance, CUDA, ", ".join(available),
        )
    so = _session_options(threads, options.allow_spinning)
    try:
        session = _open(path, so, providers)
    except Exception as err:
        if not wanted_cuda or options.device == "cuda" or _is_model_fault(err):
            raise _load_error(instance, path, providers, err) from err
        logger.warning(
            "instance '%s': creating a CUDA session failed (%s); retrying on CPU", instance, err
        )
        try:
            session = _open(path, so, [CPU])
        except Exception as cpu_err:
            raise _load_error(instance, path, [CPU], cpu_err) from cpu_err
    held = list(session.get_providers())
    if wanted_cuda and device_of(held) != "cuda":
        # onnxruntime-gpu drops CUDA quietly when no usable GPU or CUDA library is found.
        if options.device == "cuda":
            raise ModelLoadError(
                f"instance '{instance}': device 'cuda' was requested but the session got only "
                f"{held}: is a GPU visible to this process (CUDA_VISIBLE_DEVICES, the container's "
                "GPU runtime) and are CUDA and cuDNN libraries the onnxruntime-gpu build expects "
                "installed?"
            )
        logger.warning(
            "instance '%s': asked for %s but the session got only %s; running on CPU",
            instance, CUDA, held,
        )
    logger.info(
        "instance '%s': providers %s, intra_op_threads %d, inter_op_threads 1, spinning %s",
        instance, held, threads, "on" if options.allow_spinning else "off",
    )
    return session


def _open(path: Path, so: Any, providers: list[Provider]) -> Any:
    # enable_fallback=0: ORT's own fallback would print to stdout, retry on CPU behind our back,
    # and even switch a serving session to CPU after a failed run, leaving `device` a lie.
    return ort.InferenceSession(str(path), so, providers=providers, enable_fallback=0)


def _is_model_fault(err: Exception) -> bool:
    """Whether ORT blamed the model file itself, so another provider cannot help."""
    return type(err).__name__ in _MODEL_FAULTS


def _load_error(instance: str, path: Path, providers: list[Provider], err: Exception) -> ModelLoadError:
    if type(err).__name__ in ("InvalidProtobuf", "InvalidGraph"):
        return ModelLoadError(f"instance '{instance}': {path} is not a valid ONNX model: {err}")
    return ModelLoadError(
        f"instance '{instance}': onnxruntime could not load {path} with providers "
        f"{provider_names(providers)}: {err}"
    )


def _tensor_info(model: str, role: str, arg: Any) -> TensorInfo:
    dtype = dtypes.BY_ORT_TYPE.get(arg.type)
    if dtype is None:
        raise ModelLoadError(
            f"model '{model}' {role} '{arg.name}' has type {arg.type}, which ortserve cannot serve: "
            f"tensors of {dtypes.SUPPORTED_NAMES} only"
        )
    shape = tuple(d if isinstance(d, int) else -1 for d in (arg.shape or ()))
    return TensorInfo(arg.name, dtype.name, shape)


def _decode_string_feeds(feeds: Mapping[str, Array], names: tuple[str, ...]) -> dict[str, Array]:
    """A copy of `feeds` whose string inputs hold str; the caller's mapping is left alone."""
    converted = dict(feeds)
    for name in names:
        array = converted.get(name)
        if array is not None and array.dtype.kind != "U":  # "U" arrays are str already
            converted[name] = _decode_strings(name, array)
    return converted


def _decode_strings(name: str, array: Array) -> Array:
    items = array.ravel().tolist()
    try:
        text = [v.decode("utf-8") if isinstance(v, bytes) else _as_text(name, v) for v in items]
    except UnicodeDecodeError as err:
        index = next(i for i, v in enumerate(items) if isinstance(v, bytes) and not _is_utf8(v))
        raise InvalidInputError(
            f"input '{name}': element {index} is not valid UTF-8 ({err.reason} at byte {err.start}); "
            "ONNX string tensors hold text"
        ) from None
    return np.array(text, dtype=object).reshape(array.shape)


def _as_text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise InvalidInputError(f"input '{name}': BYTES elements must be bytes, got {type(value).__name__}")


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _encode_strings(array: Array) -> Array:
    encoded = [s.encode("utf-8") for s in array.ravel().tolist()]
    return np.array(encoded, dtype=object).reshape(array.shape)
