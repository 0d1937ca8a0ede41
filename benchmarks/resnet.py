"""A ResNet-50-sized ONNX model, built with the `onnx` package alone (issue 3's GPU target).

    resnet()              ResNet-50: FP32 [b, 3, 224, 224] -> [b, 1000], about 25.6 M parameters,
                          about 4.1 GFLOPs (multiply-adds) per image
    resnet(**TINY)        the same topology scaled down for CPU smoke tests (milliseconds per image)

Topology (ResNet v1, post-activation, with the stride on the 3x3 convolution as torchvision's
`resnet50` and MLPerf's "v1.5" put it): a 7x7/2 convolution stem + ReLU, a 3x3/2 max-pool, four
stages of bottleneck blocks ([3, 4, 6, 3] blocks, widths 64/128/256/512, expansion 4; a 1x1
projection shortcut on each stage's first block), global average pool, a fully connected layer.
BatchNorm is folded into each convolution's weights and bias, as ONNX Runtime's own graph
optimisation would do for an exported model, so the compute is a trained ResNet-50's.

Weights come from a seeded numpy RNG (He initialisation; each block's last convolution is scaled
down so that activations stay in range over the 16 residual additions). Values do not matter to
speed on a GPU, but NaN/inf or denormals would on a CPU, and the smoke test's outputs stay finite.
The batch dimension is dynamic (`batch`), as a Triton model with max_batch_size > 0 needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
RESNET50_BLOCKS = (3, 4, 6, 3)
EXPANSION = 4

TINY = {"width": 8, "blocks": (1, 1, 1, 1), "size": 64, "classes": 10}
"""A variant with the same layer kinds that runs in about a millisecond per image on one CPU core."""


@dataclass(frozen=True, slots=True)
class ResNet:
    """A built model: its proto, the per-image input and output dims, and what it is."""

    proto: onnx.ModelProto
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    parameters: int
    description: str


class _Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.parameters = 0
        self._count = 0

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}{self._count}"

    def _const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        self.parameters += value.size
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True, gain: float = 1.0) -> str:
        """Conv k x k (BatchNorm folded: weights and a bias), then ReLU unless `relu` is False."""
        name = self._name("conv")
        std = gain * np.sqrt(2.0 / (cin * k * k))
        w = self._const(f"{name}_w", self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * std)
        b = self._const(f"{name}_b", self.rng.standard_normal(cout, dtype=np.float32) * 0.01)
        pad = k // 2
        self.nodes.append(
            helper.make_node("Conv", [x, w, b], [name], kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
        )
        if not relu:
            return name
        self.nodes.append(helper.make_node("Relu", [name], [f"{name}_r"]))
        return f"{name}_r"

    def bottleneck(self, x: str, cin: int, width: int, stride: int) -> str:
        cout = width * EXPANSION
        h = self.conv(x, cin, width, 1)
        h = self.conv(h, width, width, 3, stride)
        h = self.conv(h, width, cout, 1, relu=False, gain=0.2)
        shortcut = x if stride == 1 and cin == cout else self.conv(x, cin, cout, 1, stride, relu=False)
        name = self._name("add")
        self.nodes += [
            helper.make_node("Add", [h, shortcut], [name]),
            helper.make_node("Relu", [name], [f"{name}_r"]),
        ]
        return f"{name}_r"


def resnet(
    width: int = 64,
    blocks: Sequence[int] = RESNET50_BLOCKS,
    size: int = 224,
    classes: int = 1000,
    seed: int = 0,
) -> ResNet:
    """ResNet-50 by default; `width` is the first stage's bottleneck width (stages: w, 2w, 4w, 8w)."""
    b = _Builder(seed)
    h = b.conv("x", 3, width, 7, 2)
    b.nodes.append(helper.make_node("MaxPool", [h], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4))
    h, channels = "pool", width
    for stage, count in enumerate(blocks):
        stage_width = width * 2**stage
        for i in range(count):
            h = b.bottleneck(h, channels, stage_width, 2 if i == 0 and stage > 0 else 1)
            channels = stage_width * EXPANSION
    b.nodes += [
        helper.make_node("GlobalAveragePool", [h], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
    ]
    fc_w = b._const("fc_w", b.rng.standard_normal((channels, classes), dtype=np.float32) / np.sqrt(channels))
    fc_b = b._const("fc_b", np.zeros(classes, np.float32))
    b.nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["y"]))
    graph = helper.make_graph(
        b.nodes,
        "resnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)  # the proto itself (under 2 GB: no external data)
    depth = 2 + 3 * sum(blocks)
    name = "ResNet-50" if (width, tuple(blocks), size, classes) == (64, RESNET50_BLOCKS, 224, 1000) else "ResNet"
    return ResNet(
        model,
        (3, size, size),
        (classes,),
        b.parameters,
        f"{name} ({depth} layers, stages {list(blocks)}, width {width}, FP32 3x{size}x{size} -> {classes}, "
        f"{b.parameters / 1e6:.1f} M parameters, BatchNorm folded, random weights)",
    )
