"""A model's configuration: config.pbtxt read, checked against the ONNX graph and completed.

The schema is Triton's `ModelConfig` (protos/ortserve_client/proto/model_config.proto), so any
Triton config.pbtxt parses. Loading a model version goes through these steps:

1. `read_config` parses `<model_dir>/config.pbtxt` (absent file: an empty config).
2. `unhonoured_fields` names what the config sets but the server does not act on; the loader
   logs one warning per path, so that a user never believes a setting is in force when it is not.
3. `complete_config`, given the tensors the ONNX graph declares, fills what the config leaves out
   (Triton's auto-complete for ONNX models) and rejects what contradicts the graph.

Only the generated protobuf schema is imported here: never grpc, never onnxruntime.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias, cast

from google.protobuf import text_format
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import Message

from ortserve.dtypes import BY_NAME
from ortserve.errors import ModelLoadError
from ortserve.repository.accelerators import unhonoured_accelerators
from ortserve_client.proto import model_config_pb2 as mc

CONFIG_FILENAME: Final = "config.pbtxt"
DEFAULT_MODEL_FILENAME: Final = "model.onnx"
PLATFORM: Final = "onnxruntime_onnx"
BACKEND: Final = "onnxruntime"


@dataclass(frozen=True, slots=True)
class GraphTensor:
    """One input or output as the ONNX graph declares it (reported by the runtime room)."""

    name: str
    datatype: str
    """KServe datatype name: "FP32", "INT64", "BYTES", ..."""
    shape: tuple[int, ...]
    """Full graph shape, batch dim included; -1 for a symbolic or unknown dim."""


def read_config(model_dir: Path) -> mc.ModelConfig:
    """Parse `<model_dir>/config.pbtxt`; an absent file gives an empty config.

    A syntax error or an unknown field raises ModelLoadError naming the file, line and column.
    The `name` field, when set, must equal the directory name (Triton's rule), and
    `default_model_filename` must be a plain file name inside the version directory.
    """
    model = model_dir.name
    path = model_dir / CONFIG_FILENAME
    config = mc.ModelConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return config
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"model '{model}': cannot read {path}: {exc}") from exc
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        # str(exc) is "LINE:COL : detail"; restate it in words so the position is unmistakable.
        detail = re.sub(r"^\d+:\d+ : ", "", str(exc))
        where = f"line {exc.GetLine()}, column {exc.GetColumn()}: " if exc.GetLine() else ""
        raise ModelLoadError(f"model '{model}': {path}: {where}{detail}") from exc
    if config.name and config.name != model:
        raise ModelLoadError(
            f"model '{model}': {path} says name \"{config.name}\"; "
            f"expected the model directory's name, '{model}'"
        )
    model_filename(config, model)
    return config


def model_filename(config: mc.ModelConfig, model: str) -> str:
    """The file to load in each version directory: `default_model_filename` or model.onnx.

    The name comes from a user's file and is joined to a path, so anything that could leave the
    version directory ("../x", "/etc/x", "a/b") is refused.
    """
    name = config.default_model_filename
    if not name:
        return DEFAULT_MODEL_FILENAME
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ModelLoadError(
            f"model '{model}': default_model_filename \"{name}\" is not a plain file name; "
            f"expected a name such as \"{DEFAULT_MODEL_FILENAME}\" inside the version directory"
        )
    return name


# What the server acts on, as a tree over the schema's field names. A field absent from its
# level is unhonoured and reported by its path; `None` honours the field with all it contains;
# a mapping descends into the message (each element of a repeated field, each value of a map).
# Listing the honoured children one by one, rather than honouring a whole message, means that a
# field added to the schema later is reported until someone decides to act on it.
_Honoured: TypeAlias = Mapping[str, "_Honoured | None"]

_QUEUE_POLICY: Final[_Honoured] = {
    "timeout_action": None,
    "default_timeout_microseconds": None,
    "allow_timeout_override": None,
    "max_queue_size": None,
}
HONOURED: Final[_Honoured] = {
    "name": None,
    "platform": None,
    "backend": None,
    "runtime": None,
    "version_policy": {"latest": {"num_versions": None}, "all": {}, "specific": {"versions": None}},
    "max_batch_size": None,
    "input": {"name": None, "data_type": None, "dims": None, "format": None},
    "output": {"name": None, "data_type": None, "dims": None},
    "instance_group": {"name": None, "kind": None, "count": None, "gpus": None},
    "default_model_filename": None,
    "dynamic_batching": {
        "preferred_batch_size": None,
        "max_queue_delay_microseconds": None,
        "priority_levels": None,
        "default_priority_level": None,
        "default_queue_policy": _QUEUE_POLICY,
        "priority_queue_policy": _QUEUE_POLICY,
        "preserve_ordering": None,
    },
    # Keys are checked by the batching room, which owns their meaning.
    "parameters": None,
    "model_warmup": {
        "name": None,
        "batch_size": None,
        "inputs": {"data_type": None, "dims": None, "zero_data": None, "random_data": None, "input_data_file": None},
        "count": None,
    },
    "response_cache": {"enable": None},
    # Of `optimization`, only the accelerators are honoured (the "cuda" one: accelerators.py, which
    # also reports the others); descending reports "optimization.cuda.graphs" rather than a bare,
    # uninformative "optimization".
    "optimization": {"cuda": {}, "execution_accelerators": None},
}


def unhonoured_fields(config: mc.ModelConfig) -> list[str]:
    """Dotted paths of the fields set in `config` that the server does not act on.

    E.g. ["optimization.cuda.graphs", "input[0].reshape", "sequence_batching", "model_metrics"],
    in field-number order; an unhonoured field is reported once, not each field inside it.
    """
    found: list[str] = []
    _walk(config, HONOURED, "", found)
    return found + unhonoured_accelerators(config)


def _walk(message: Message, honoured: _Honoured, prefix: str, found: list[str]) -> None:
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.name not in honoured:
            found.append(path)
            continue
        inner = honoured[field.name]
        if inner is None or field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is None:
                continue  # a map of scalars has nothing inside to check
            for key in sorted(value):
                shown = f'"{key}"' if isinstance(key, str) else str(key)
                _walk(value[key], inner, f"{path}[{shown}].", found)
        elif field.is_repeated:
            for index, item in enumerate(value):
                _walk(item, inner, f"{path}[{index}].", found)
        else:
            _walk(value, inner, f"{path}.", found)


def complete_config(
    config: mc.ModelConfig,
    model_name: str,
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    *,
    default_max_batch_size: int,
) -> mc.ModelConfig:
    """A new config: `config` completed from the ONNX graph and checked; `config` is not changed.

    1. name, platform "onnxruntime_onnx", backend "onnxruntime", default_model_filename,
       version_policy `latest { num_versions: 1 }` when unset.
    2. Batching: a max_batch_size > 0 needs a -1 first dim on every graph tensor. With
       max_batch_size 0 and no tensor declared (pure auto-complete), a graph whose every tensor has
       a -1 first dim gets `default_max_batch_size` (<= 0 turns this off) and, when no scheduler
       is chosen, an empty `dynamic_batching {}`. A config that lists tensors with
       max_batch_size 0 stays unbatched: proto3 cannot tell an explicit 0 from an unset field.
    3. Tensors: those the config declares must exist in the graph with the same type and
       compatible dims (the most specific of each pair is kept); the others are added from the
       graph, without the batch dim when batching.
    4. instance_group: one `{ count: 1 kind: KIND_AUTO }` when none; count 0 becomes 1;
       unnamed groups are named as Triton names them.
    5. dynamic_batching: needs max_batch_size > 0; preferred sizes and priority levels in range.
    Every other field the user set is kept untouched.
    """
    out = mc.ModelConfig()
    out.CopyFrom(config)
    model = model_name
    if out.name and out.name != model:
        raise ModelLoadError(f"model '{model}': config says name \"{out.name}\"; expected '{model}'")
    out.name = model
    for field, wanted in (("platform", PLATFORM), ("backend", BACKEND)):
        given = getattr(out, field)
        if given and given != wanted:
            raise ModelLoadError(
                f"model '{model}': config says {field} \"{given}\" but this server runs ONNX models "
                f"only; expected {field} \"{wanted}\" or none"
            )
        setattr(out, field, wanted)
    out.default_model_filename = model_filename(out, model)
    if not out.HasField("version_policy"):
        out.version_policy.latest.num_versions = 1

    _complete_batching(out, inputs, outputs, default_max_batch_size)
    batched = out.max_batch_size > 0
    _complete_tensors(model, "input", out.input, inputs, batched)
    _complete_tensors(model, "output", out.output, outputs, batched)
    _complete_instance_groups(out)
    _check_dynamic_batching(out)
    return out


def _shape_text(dims: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _complete_batching(
    out: mc.ModelConfig,
    inputs: Sequence[GraphTensor],
    outputs: Sequence[GraphTensor],
    default_max_batch_size: int,
) -> None:
    model = out.name
    tensors = [("input", t) for t in inputs] + [("output", t) for t in outputs]
    fixed = [(kind, t) for kind, t in tensors if not t.shape or t.shape[0] != -1]
    if out.max_batch_size < 0:
        raise ModelLoadError(
            f"model '{model}': max_batch_size is {out.max_batch_size}; expected 0 (no batching) or more"
        )
    if out.max_batch_size > 0:
        if fixed:
            named = ", ".join(f"{kind} '{t.name}' {_shape_text(t.shape)}" for kind, t in fixed)
            raise ModelLoadError(
                f"model '{model}': max_batch_size {out.max_batch_size} needs a variable (-1) first "
                f"dim on every graph input and output, the batch dim, but the ONNX graph has {named}; "
                "set max_batch_size: 0 or export the model with a dynamic batch axis"
            )
        return
    declares_tensors = len(out.input) > 0 or len(out.output) > 0
    if declares_tensors or default_max_batch_size <= 0 or not inputs or fixed:
        return
    out.max_batch_size = default_max_batch_size
    if out.WhichOneof("scheduling_choice") is None:
        out.dynamic_batching.SetInParent()


_Tensors: TypeAlias = RepeatedCompositeFieldContainer


def _complete_tensors(
    model: str,
    kind: str,
    declared: _Tensors[mc.ModelInput] | _Tensors[mc.ModelOutput],
    graph: Sequence[GraphTensor],
    batched: bool,
) -> None:
    by_name = {t.name: t for t in graph}
    seen: set[str] = set()
    for tensor in declared:
        where = f"model '{model}' {kind} '{tensor.name}'"
        if not tensor.name:
            raise ModelLoadError(
                f"model '{model}': a config {kind} has no name; expected one of {sorted(by_name)}"
            )
        if tensor.name in seen:
            raise ModelLoadError(f"{where}: declared twice in the config; expected once")
        seen.add(tensor.name)
        found = by_name.get(tensor.name)
        if found is None:
            raise ModelLoadError(
                f"{where}: not in the ONNX graph; expected one of the graph's {kind}s {sorted(by_name)}"
            )
        graph_type = _config_type(model, kind, found)
        if tensor.data_type == mc.TYPE_INVALID:
            tensor.data_type = graph_type
        elif tensor.data_type != graph_type:
            raise ModelLoadError(
                f"{where}: config says {_type_name(tensor.data_type)} but the ONNX graph has {found.datatype}"
            )
        graph_dims = found.shape[1:] if batched else found.shape
        config_dims = list(tensor.dims)
        if not config_dims:
            tensor.dims.extend(graph_dims)
            continue
        bad = [d for d in config_dims if d < 1 and d != -1]
        if bad:
            raise ModelLoadError(
                f"{where}: config dims {_shape_text(config_dims)} hold {bad[0]}; "
                "expected each dim >= 1, or -1 for a variable dim"
            )
        compatible = len(config_dims) == len(graph_dims) and all(
            c == g or c == -1 or g == -1 for c, g in zip(config_dims, graph_dims, strict=True)
        )
        if not compatible:
            note = " (the batch dim left out, as max_batch_size > 0)" if batched else ""
            raise ModelLoadError(
                f"{where}: config says dims {_shape_text(config_dims)} but the ONNX graph has "
                f"{_shape_text(graph_dims)}{note}; expected the same rank with equal dims or -1"
            )
        # The most specific of each pair: a config may pin a dim the graph leaves open, and a -1
        # in the config over a fixed graph dim would only postpone the error to ONNX Runtime.
        tensor.dims[:] = [g if c == -1 else c for c, g in zip(config_dims, graph_dims, strict=True)]
    for graph_tensor in graph:
        if graph_tensor.name in seen:
            continue
        added = declared.add()
        added.name = graph_tensor.name
        added.data_type = _config_type(model, kind, graph_tensor)
        added.dims.extend(graph_tensor.shape[1:] if batched else graph_tensor.shape)


def _config_type(model: str, kind: str, tensor: GraphTensor) -> mc.DataType:
    dtype = BY_NAME.get(tensor.datatype)
    if dtype is None:
        raise ModelLoadError(
            f"model '{model}' {kind} '{tensor.name}': the ONNX graph has type {tensor.datatype}, "
            f"which this server cannot serve; expected one of {', '.join(BY_NAME)}"
        )
    # The stubs type enum fields as their wrapper class; the values are plain ints at run time.
    return cast("mc.DataType", dtype.config_enum)


def _type_name(value: int) -> str:
    try:
        return mc.DataType.Name(value)
    except ValueError:
        return f"data_type {value}"


def _complete_instance_groups(out: mc.ModelConfig) -> None:
    model = out.name
    if not out.instance_group:
        # Triton names the group it adds after the model.
        out.instance_group.add(name=model, kind=mc.ModelInstanceGroup.KIND_AUTO, count=1)
        return
    for index, group in enumerate(out.instance_group):
        if not group.name:
            group.name = f"{model}_{index}"
        where = f"model '{model}' instance_group '{group.name}'"
        if group.count < 0:
            raise ModelLoadError(f"{where}: count is {group.count}; expected 1 or more (0 means 1)")
        if group.count == 0:
            group.count = 1
        if group.gpus and group.kind in (mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_MODEL):
            kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
            raise ModelLoadError(
                f"{where}: kind {kind} lists gpus {list(group.gpus)}; expected no gpus, or kind KIND_GPU"
            )
        negative = [g for g in group.gpus if g < 0]
        if negative:
            raise ModelLoadError(f"{where}: gpus {list(group.gpus)}; expected device ids >= 0")


def _check_dynamic_batching(out: mc.ModelConfig) -> None:
    if not out.HasField("dynamic_batching"):
        return
    model = out.name
    batching = out.dynamic_batching
    if out.max_batch_size == 0:
        raise ModelLoadError(
            f"model '{model}': dynamic_batching is set but max_batch_size is 0 (the model takes no "
            "batch dim); expected max_batch_size > 0 or no dynamic_batching"
        )
    for size in batching.preferred_batch_size:
        if not 1 <= size <= out.max_batch_size:
            raise ModelLoadError(
                f"model '{model}': dynamic_batching preferred_batch_size {size}; "
                f"expected 1 to max_batch_size {out.max_batch_size}"
            )
    levels = batching.priority_levels
    if levels == 0:
        return
    # Triton's rules: levels are numbered 1..priority_levels, 1 the highest.
    if not 1 <= batching.default_priority_level <= levels:
        raise ModelLoadError(
            f"model '{model}': dynamic_batching default_priority_level {batching.default_priority_level}; "
            f"expected 1 to priority_levels {levels}"
        )
    for level in sorted(batching.priority_queue_policy):
        if not 1 <= level <= levels:
            raise ModelLoadError(
                f"model '{model}': dynamic_batching priority_queue_policy for level {level}; "
                f"expected levels 1 to priority_levels {levels}"
            )
    if batching.preserve_ordering and levels > 1:
        raise ModelLoadError(
            f"model '{model}': dynamic_batching preserve_ordering with priority_levels {levels}; "
            "expected at most 1 priority level when responses must keep their order"
        )


def config_text(config: mc.ModelConfig) -> str:
    """The config in text format, as a config.pbtxt would hold it (for logs and debugging)."""
    return text_format.MessageToString(config)
