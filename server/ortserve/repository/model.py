"""ModelVersion: one loaded version of a model, ready to infer.

It composes what the lower rooms provide: the ONNX Runtime sessions (runtime), the
dynamic batcher that feeds them (batching), the statistics (observability), and the
completed configuration and signature (this room).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from pathlib import Path
from time import perf_counter_ns

import numpy as np

from ortserve.batching import BatchObserver, BatchReport, BatchResult, DynamicBatcher
from ortserve.errors import ModelLoadError
from ortserve.observability import DriftMonitor, DriftOptions, ModelStats, RequestSpan, Tracing
from ortserve.observability.drift import REFERENCE_FILE
from ortserve.repository.accelerators import DEPRECATED_PARAMETERS, cuda_provider_options
from ortserve.repository.batch_policy import (
    BATCH_HOLD_PARAMETER,
    BATCH_SHAPES_PARAMETER,
    LATENCY_TARGET_PARAMETER,
    batch_policy,
)
from ortserve.repository.cache import CacheView
from ortserve.repository.model_config import GraphTensor, complete_config, unhonoured_fields
from ortserve.repository.routing import WEIGHTS_PARAMETER
from ortserve.repository.signature import REJECT_NONFINITE_PARAMETER, Signature, zero_feeds
from ortserve.repository.warmup import WarmupSample, warmup_samples
from ortserve.runtime import InstanceSpec, OnnxModel, RuntimeOptions
from ortserve_client.proto import model_config_pb2 as mc

log = logging.getLogger("ortserve.repository")

MODEL_PARAMETERS = {
    LATENCY_TARGET_PARAMETER,
    BATCH_SHAPES_PARAMETER,
    BATCH_HOLD_PARAMETER,
    REJECT_NONFINITE_PARAMETER,
    WEIGHTS_PARAMETER,
    *DEPRECATED_PARAMETERS,
}
"""Keys of a config's `parameters` that ortserve acts on; others are logged as ignored."""

_KINDS = {
    mc.ModelInstanceGroup.KIND_AUTO: "auto",
    mc.ModelInstanceGroup.KIND_GPU: "gpu",
    mc.ModelInstanceGroup.KIND_CPU: "cpu",
    mc.ModelInstanceGroup.KIND_MODEL: "auto",
}


def instance_specs(config: mc.ModelConfig, model: str = "") -> list[InstanceSpec]:
    """One InstanceSpec per instance of every instance_group (default: one, kind auto).

    Each carries the config's CUDA execution provider options (accelerators.py).
    """
    cuda = tuple(sorted(cuda_provider_options(model or config.name, config).items()))
    specs: list[InstanceSpec] = []
    for group in config.instance_group or [mc.ModelInstanceGroup(count=1)]:
        gpus = list(group.gpus) or [0]
        for index in range(max(group.count, 1)):
            specs.append(InstanceSpec(kind=_KINDS[group.kind], gpu_id=gpus[index % len(gpus)], cuda_options=cuda))
    return specs


class ModelVersion:
    """A loaded, warmed-up model version with its batcher, or the reason it is not."""

    def __init__(
        self,
        name: str,
        version: int,
        config: mc.ModelConfig,
        onnx: OnnxModel,
        default_latency_target_ms: float = 0.0,
    ) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.signature = Signature.from_config(config)
        self.stats = ModelStats()
        self.onnx = onnx
        self.device = onnx.instances[0].device
        on_cuda = any(instance.device == "cuda" for instance in onnx.instances)
        self.batch_observers: list[BatchObserver] = []
        """Called with every BatchReport after the statistics are updated (e.g. tracing)."""
        self.path: Path | None = None
        """The model file it was loaded from (None when built directly)."""
        self.drift: DriftMonitor | None = None
        """Samples the inputs when the version ships reference data (see `instrument`)."""
        self.cache: CacheView | None = None
        """This version's handle on the response cache, when its config enables it (set by the registry)."""
        self._batcher = DynamicBatcher(
            f"{name}_{version}",
            [instance.run for instance in onnx.instances],
            batch_policy(config, default_latency_target_ms, "cuda" if on_cuda else "cpu"),
            on_batch=self._on_batch,
            stoppers=onnx.instances,
        )
        if self._batcher.policy.batch_shapes:
            log.info(
                "model %r version %d: batches are padded to the batch shapes %s",
                name, version, ",".join(map(str, self._batcher.policy.batch_shapes)),
            )

    @classmethod
    def load_blocking(
        cls,
        name: str,
        version: int,
        base_config: mc.ModelConfig,
        path: Path,
        options: RuntimeOptions,
        default_max_batch_size: int,
        default_latency_target_ms: float = 0.0,
    ) -> ModelVersion:
        """Create the sessions, complete the config from the graph and warm up (blocking)."""
        for field in unhonoured_fields(base_config):
            log.warning("model %r: config field %r is not honoured by ortserve; ignored", name, field)
        for key in sorted(set(base_config.parameters) - MODEL_PARAMETERS):
            log.warning(
                "model %r: config parameter %r is not known to ortserve; ignored (known: %s)",
                name, key, ", ".join(sorted(MODEL_PARAMETERS)),
            )
        onnx = OnnxModel.load(path, instance_specs(base_config), options, name=f"{name}_{version}")
        try:
            config = complete_config(
                base_config,
                name,
                [GraphTensor(t.name, t.datatype, t.shape) for t in onnx.inputs],
                [GraphTensor(t.name, t.datatype, t.shape) for t in onnx.outputs],
                default_max_batch_size=default_max_batch_size,
            )
            model = cls(name, version, config, onnx, default_latency_target_ms)
            model.path = path
            model.warm_up(warmup_samples(config, model.signature, path.parent.parent))
        except BaseException:
            onnx.close()
            raise
        return model

    def warm_up(self, samples: Sequence[WarmupSample] = ()) -> None:
        """Run every instance at each batch size the batcher forms, twice, then `samples` (blocking).

        Batch sizes: 1, every preferred batch size, every batch shape batches are padded to
        (BatchPolicy.batch_shapes) and max_batch_size. The first run of each size
        pays one-time costs; the second is timed and seeds the batcher's cost model, so the
        latency-target controller starts from real numbers. Then the config's `model_warmup`
        samples (warmup.py), each `count` times. The version takes no traffic before this ends.
        """
        preferred = self.config.dynamic_batching.preferred_batch_size if self.config.max_batch_size else ()
        shapes = self._batcher.policy.batch_shapes
        sizes = sorted({1, self.config.max_batch_size or 1, *preferred, *shapes})
        began = perf_counter_ns()
        # With batch shapes, two more runs at the largest two sizes, each a change of shape, seed
        # what a change costs (batching/shapes.py); the shapes' own times come from the second runs.
        changes = sizes[-2:] if shapes and len(sizes) > 1 else []
        for index, instance in enumerate(self.onnx.instances):
            for rows, times in [*((r, 2) for r in sizes), *((r, 1) for r in changes)]:
                feeds = zero_feeds(self.signature, rows)
                try:
                    for _ in range(times):
                        started = perf_counter_ns()
                        instance.run(feeds)
                        ns = perf_counter_ns() - started
                        self._batcher.observe_run(index, rows, ns)
                    if times == 2:
                        self._batcher.observe_cost(rows, ns)
                except Exception as exc:
                    raise ModelLoadError(
                        f"model {self.name!r} version {self.version}: warm-up at batch size {rows} "
                        f"failed on instance {instance.name}: {exc}"
                    ) from exc
            for sample in samples:
                # The planner must know the shape the session ran last, samples included.
                rows = len(next(iter(sample.feeds.values()))) if self.config.max_batch_size else 1
                for _ in range(sample.count):
                    try:
                        started = perf_counter_ns()
                        instance.run(sample.feeds)
                        self._batcher.observe_run(index, rows, perf_counter_ns() - started)
                    except Exception as exc:
                        raise ModelLoadError(
                            f"model {self.name!r} version {self.version}: model_warmup {sample.name!r} "
                            f"failed on instance {instance.name}: {exc}"
                        ) from exc
        change = max((self._batcher.planner(i).change_ns for i in range(len(self.onnx.instances))), default=0.0)
        log.info(
            "model %r version %d: warmed up at batch sizes %s on %d instance(s) in %.2f s%s",
            self.name, self.version, ",".join(map(str, sizes)), len(self.onnx.instances),
            (perf_counter_ns() - began) / 1e9,
            f"; a change of batch shape costs {change / 1e6:.1f} ms" if shapes else "",
        )

    def start(self) -> None:
        """Start the batcher on the running event loop."""
        self._batcher.start()

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        rows: int,
        deadline_ns: int | None = None,
        priority: int = 0,
        timeout_us: int = 0,
        context: object = None,
    ) -> Awaitable[BatchResult]:
        """Queue a request on this version's batcher; await the result for its slice of the batch.

        The batcher's own coroutine is returned (no frame of this one in between) unless the
        request is sampled for tracing, whose queue span is recorded once the batch has run.
        """
        if self.drift is not None:
            self.drift.offer(inputs)  # a clock comparison; a small copy once per sampling gap
        submitted = self._batcher.submit(
            inputs, rows=rows, deadline_ns=deadline_ns, priority=priority, timeout_us=timeout_us, context=context
        )
        if type(context) is RequestSpan and context.span is not None:  # only sampled requests have a queue span
            return self._traced(submitted, context)
        return submitted

    async def _traced(self, submitted: Awaitable[BatchResult], span: RequestSpan) -> BatchResult:
        result = await submitted
        span.queued(self.name, self.version_str, result.enqueued_ns, result.started_ns)
        return result

    def instrument(self, tracing: Tracing | None, drift: DriftOptions | None) -> None:
        """Attach the batch-span observer and, when the version ships reference.npz beside its
        model file, the drift monitor (blocking: reads the reference)."""
        if tracing is not None:
            self.batch_observers.append(tracing.batch_observer(self.name, self.version_str))
        if drift is not None and self.path is not None:
            self.drift = DriftMonitor.load(
                self.path.parent / REFERENCE_FILE,
                self.name,
                self.version_str,
                [tensor.name for tensor in self.signature.inputs],
                drift,
                batched=self.config.max_batch_size > 0,
            )

    @property
    def batcher(self) -> DynamicBatcher:
        return self._batcher

    def _on_batch(self, report: BatchReport) -> None:
        if report.error is None:
            self.stats.record_batch(
                report.rows, report.compute_input_ns, report.compute_infer_ns, report.compute_output_ns
            )
        for observer in self.batch_observers:
            observer(report)

    @property
    def queued_requests(self) -> int:
        return self._batcher.queued_requests

    async def close(self, timeout_s: float | None = None) -> None:
        """Finish queued work, stop the batcher and release the sessions."""
        await self._batcher.close(timeout_s)
        if self.cache is not None:
            self.cache.clear()
        await asyncio.to_thread(self.onnx.close)
