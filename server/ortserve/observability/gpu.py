"""Triton's GPU families (nv_gpu_*), read through NVML (nvidia-ml-py) at scrape time.

Per GPU, labelled `gpu_uuid` as Triton labels them:
`nv_gpu_utilization` (0.0-1.0), `nv_gpu_memory_total_bytes`, `nv_gpu_memory_used_bytes`,
`nv_gpu_power_usage` (watts) and `nv_gpu_power_limit` (watts).

NVML is initialised on the first scrape. Without a GPU (or a driver) `nvmlInit()` raises an
NVMLError: that is logged once at debug level, remembered, and the collector then yields
nothing, so CPU nodes pay nothing. A device whose handle or UUID cannot be read is skipped
for that scrape; a query a device does not support (power on some boards, MIG slices) leaves
only that sample out. Values are plain decimals (prometheus_client prints floats below 1e16
without an exponent), which perf_analyzer's metric parser needs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("ortserve.observability")

_FAMILIES = (
    ("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
    ("nv_gpu_memory_total_bytes", "GPU total memory, in bytes"),
    ("nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
    ("nv_gpu_power_usage", "GPU power usage in watts"),
    ("nv_gpu_power_limit", "GPU power management limit in watts"),
)


class GpuCollector(Collector):
    """nv_gpu_* gauges per GPU; nothing at all on a machine without NVML."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml  # injected in tests; pynvml otherwise, imported on the first scrape
        self._lock = threading.Lock()
        self._state: str = "new"  # new -> ready | unavailable

    @property
    def available(self) -> bool:
        """Whether NVML answered (initialises it on first use)."""
        return self._init()

    def collect(self) -> Iterator[Metric]:
        if not self._init():
            return
        nvml = self._nvml
        assert nvml is not None
        families = {name: GaugeMetricFamily(name, doc, labels=("gpu_uuid",)) for name, doc in _FAMILIES}
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.debug("NVML: cannot count devices: %s", exc)
            return
        for index in range(count):
            try:
                values = _read_device(nvml, index)
            except nvml.NVMLError as exc:
                log.debug("NVML: device %d skipped: %s", index, exc)
                continue
            uuid = values.pop("uuid")
            for name, value in values.items():
                families[name].add_metric((uuid,), value)
        yield from families.values()

    def _init(self) -> bool:
        with self._lock:
            if self._state == "new":
                self._state = "ready" if self._start() else "unavailable"
            return self._state == "ready"

    def _start(self) -> bool:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                log.debug("nvidia-ml-py is not installed: no GPU metrics")
                return False
            self._nvml = pynvml
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as exc:
            log.debug("NVML unavailable (no GPU or no driver): no GPU metrics: %s", exc)
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._state == "ready" and self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except self._nvml.NVMLError:
                    pass
            self._state = "new"


def _read_device(nvml: Any, index: int) -> dict[str, Any]:
    """The device's UUID and every family it answers (a query it does not support is left out)."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    uuid = nvml.nvmlDeviceGetUUID(handle)
    values: dict[str, Any] = {"uuid": uuid.decode() if isinstance(uuid, bytes) else str(uuid)}
    queries: dict[str, Callable[[], float]] = {
        "nv_gpu_utilization": lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
        "nv_gpu_memory_total_bytes": lambda: float(nvml.nvmlDeviceGetMemoryInfo(handle).total),
        "nv_gpu_memory_used_bytes": lambda: float(nvml.nvmlDeviceGetMemoryInfo(handle).used),
        "nv_gpu_power_usage": lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # mW -> W
        "nv_gpu_power_limit": lambda: nvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0,
    }
    for name, query in queries.items():
        try:
            values[name] = query()
        except nvml.NVMLError as exc:  # e.g. NotSupported: power on some boards, MIG slices
            log.debug("NVML: device %d: %s unavailable: %s", index, name, exc)
    return values
