"""Server settings: CLI flags > environment (ORTSERVE_*) > defaults, validated once at start.

`ServerSettings` is built once by the CLI (or by tests, directly) and passed down through
constructors; nothing reads settings from globals or the environment after start-up.
Every field carries its unit in its name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
EVENT_LOOPS = ("auto", "uvloop", "asyncio")
SHARED_MEMORY = ("system", "off")
ENV_PREFIX = "ORTSERVE_"
LOG_FORMATS = ("text", "json")
MODEL_CONTROL_MODES = ("none", "poll", "explicit")


class SettingsError(ValueError):
    """A setting has an invalid value; the message names the setting and what is allowed."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Everything the server is told at start-up."""

    model_repository: Path | None = None
    """Model repository directory; None serves the bundled demo repository."""
    host: str = "0.0.0.0"
    """Address both ports bind to."""
    grpc_port: int = 8001
    """gRPC port (KServe V2 / Triton protocol and grpc.health.v1); 0 picks a free port."""
    http_port: int = 8002
    """HTTP port for /metrics and /v2/health/{live,ready}; 0 picks a free port, -1 disables it."""
    device: str = "auto"
    """Execution device: auto (CUDA when available), cpu, or cuda (fails without a GPU)."""
    intra_op_threads: int = 0
    """ONNX Runtime intra-op threads per instance; 0 divides the available cores among instances."""
    gil_switch_interval_ms: float = 0.0
    """Python's GIL switch interval (sys.setswitchinterval) in ms; 0 keeps Python's 5 ms."""
    default_max_batch_size: int = 32
    """max_batch_size given to batchable models whose config does not set one."""
    latency_target_ms: float = 0.0
    """Default p99 latency target of batchable models (config parameter latency_target_ms overrides); 0 = greedy."""
    max_message_bytes: int = 2**31 - 1
    """Largest gRPC message accepted or sent, in bytes."""
    drain_seconds: float = 0.0
    """On SIGTERM, how long to keep serving while reporting not ready (for load balancers)."""
    grace_seconds: float = 30.0
    """After the drain window, how long accepted requests may take to finish."""
    log_level: str = "info"
    """Log level: debug, info, warning, error (the request path never logs below warning)."""
    event_loop: str = "auto"
    """Event loop: auto (uvloop when installed), uvloop, or asyncio."""
    max_inflight_requests: int = 1024
    """Most inference requests in flight at once; beyond it UNAVAILABLE at once (0 = unbounded)."""
    max_tensor_elements: int = 2**26
    """Most elements one input tensor may declare; beyond it RESOURCE_EXHAUSTED before any allocation."""
    shared_memory: str = "system"
    """Triton's system shared memory extension (tensors in /dev/shm regions of same-host clients): system or off."""
    tls_cert: Path | None = None
    """PEM certificate chain of the gRPC port (with tls_key: TLS; re-read when the file changes)."""
    tls_key: Path | None = None
    """PEM private key of tls_cert (re-read when the file changes)."""
    tls_client_ca: Path | None = None
    """PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."""
    auth_api_keys_file: Path | None = None
    """TOML file of API keys (id, sha256 of the key, scopes); turns authentication on."""
    auth_jwt_secret_file: Path | None = None
    """File holding the HS256 secret (>= 32 bytes) that verifies bearer JWTs; turns authentication on."""
    auth_jwt_public_key_file: Path | None = None
    """PEM RSA (RS256) or P-256 (ES256) public key that verifies bearer JWTs; turns authentication on."""
    auth_jwt_jwks_file: Path | None = None
    """JWKS file whose keys (chosen by kid) verify bearer JWTs, re-read when it changes; turns authentication on."""
    auth_jwt_issuer: str = ""
    """Required `iss` of bearer JWTs ("" = not checked)."""
    auth_jwt_audience: str = ""
    """Required `aud` of bearer JWTs ("" = tokens must carry none)."""
    auth_jwt_leeway_seconds: float = 30.0
    """Clock skew allowed when checking a JWT's exp, nbf and iat."""
    rate_limit_inference_per_s: float = 0.0
    """Inference requests per second per client (token subject, key id or peer host); 0 = unlimited."""
    rate_limit_inference_burst: int = 0
    """Inference requests a client may send at once above its rate (0 = the rate rounded up)."""
    rate_limit_metadata_per_s: float = 0.0
    """Metadata requests per second per client; 0 = unlimited."""
    rate_limit_metadata_burst: int = 0
    """Metadata requests a client may send at once above its rate (0 = the rate rounded up)."""
    rate_limit_control_per_s: float = 0.0
    """Model load/unload requests per second per client; 0 = unlimited."""
    rate_limit_control_burst: int = 0
    """Model load/unload requests a client may send at once above its rate (0 = the rate rounded up)."""
    audit_log_file: Path | None = None
    """Append the audit log of model loads and unloads (JSON lines) to this file as well as to the log."""
    log_format: str = "text"
    """Log format: text (for a terminal) or json (one object per line, with request, trace and span ids)."""
    access_log_ratio: float = 0.0
    """Fraction of inference-service RPCs written to the access log (0 = off, 1 = every call)."""
    triton_metrics: bool = True
    """Expose Triton's nv_inference_* and nv_gpu_* families on /metrics (false: only the ortserve_* ones)."""
    drift_interval_seconds: float = 60.0
    """How often models that ship reference.npz compare recent inputs with it; 0 = no drift monitoring."""
    drift_window_rows: int = 2048
    """Sampled rows per model input compared with the reference at each drift evaluation (>= 200)."""
    drift_psi_threshold: float = 0.2
    """A feature whose population stability index reaches this is logged as drifting."""
    drift_pvalue_threshold: float = 0.001
    """A feature whose Kolmogorov-Smirnov p-value falls below this is logged as drifting."""
    model_control_mode: str = "none"
    """none: load every model at start; poll: that, then follow the repository's changes; explicit: load_model only."""
    repository_poll_seconds: float = 15.0
    """poll mode: seconds between two scans of the repository for new, changed and removed models."""
    load_model: str = ""
    """explicit mode: models to load at start, comma-separated (the flag may repeat); * loads every model."""
    response_cache_bytes: int = 64 * 2**20
    """Bytes of the response cache shared by the models whose config enables it; 0 turns it off."""
    require_validation: bool = False
    """Serve a model version only when a passing validation.json (ortserve validate) vouches for its file."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise SettingsError(f"device: expected one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("grpc_port",):
            _check_port(name, getattr(self, name), allow_disabled=False)
        _check_port("http_port", self.http_port, allow_disabled=True)
        if self.intra_op_threads < 0:
            raise SettingsError(f"intra_op_threads: expected >= 0, got {self.intra_op_threads}")
        if not 0 <= self.gil_switch_interval_ms <= 100:
            raise SettingsError(
                f"gil_switch_interval_ms: expected 0 (Python's default) to 100, got {self.gil_switch_interval_ms}"
            )
        if self.default_max_batch_size < 1:
            raise SettingsError(
                f"default_max_batch_size: expected >= 1, got {self.default_max_batch_size}"
            )
        if not 1024 <= self.max_message_bytes <= 2**31 - 1:
            raise SettingsError(
                f"max_message_bytes: expected 1024..{2**31 - 1}, got {self.max_message_bytes}"
            )
        if not self.latency_target_ms >= 0:  # NaN fails too
            raise SettingsError(f"latency_target_ms: expected >= 0 (0 = greedy batching), got {self.latency_target_ms}")
        if not (self.drain_seconds >= 0 and self.grace_seconds >= 0):  # NaN fails too
            raise SettingsError("drain_seconds and grace_seconds must be >= 0")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError(f"log_level: expected debug, info, warning or error, got {self.log_level!r}")
        if self.event_loop not in EVENT_LOOPS:
            raise SettingsError(f"event_loop: expected one of {', '.join(EVENT_LOOPS)}, got {self.event_loop!r}")
        if self.shared_memory not in SHARED_MEMORY:
            raise SettingsError(
                f"shared_memory: expected one of {', '.join(SHARED_MEMORY)}, got {self.shared_memory!r}"
            )
        if self.max_inflight_requests < 0:
            raise SettingsError(
                f"max_inflight_requests: expected >= 0 (0 = unbounded), got {self.max_inflight_requests}"
            )
        if self.max_tensor_elements < 1:
            raise SettingsError(f"max_tensor_elements: expected >= 1, got {self.max_tensor_elements}")
        for name in ("auth_jwt_leeway_seconds", "rate_limit_inference_per_s", "rate_limit_metadata_per_s",
                     "rate_limit_control_per_s"):
            if not 0 <= getattr(self, name) < float("inf"):  # NaN fails too
                raise SettingsError(f"{name}: expected a finite number >= 0, got {getattr(self, name)}")
        for name in ("rate_limit_inference_burst", "rate_limit_metadata_burst", "rate_limit_control_burst"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name}: expected >= 0 (0 = the rate rounded up), got {getattr(self, name)}")
        if self.model_repository is not None and not Path(self.model_repository).is_dir():
            raise SettingsError(f"model_repository: {self.model_repository} is not a directory")
        self._check_observability()
        self._check_model_management()

    def _check_model_management(self) -> None:
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            raise SettingsError(
                f"model_control_mode: expected one of {', '.join(MODEL_CONTROL_MODES)}, got {self.model_control_mode!r}"
            )
        if not 0 < self.repository_poll_seconds < float("inf"):  # NaN fails too
            raise SettingsError(
                f"repository_poll_seconds: expected a finite number > 0, got {self.repository_poll_seconds}"
            )
        if self.response_cache_bytes < 0:
            raise SettingsError(f"response_cache_bytes: expected >= 0 (0 = off), got {self.response_cache_bytes}")

    def _check_observability(self) -> None:
        if self.log_format.lower() not in LOG_FORMATS:
            raise SettingsError(f"log_format: expected text or json, got {self.log_format!r}")
        if not 0 <= self.access_log_ratio <= 1:  # NaN fails too
            raise SettingsError(f"access_log_ratio: expected 0..1, got {self.access_log_ratio}")
        if not 0 <= self.drift_interval_seconds < float("inf"):
            raise SettingsError(f"drift_interval_seconds: expected a finite number >= 0 (0 = off), got "
                                f"{self.drift_interval_seconds}")
        if self.drift_window_rows < 200:
            raise SettingsError(f"drift_window_rows: expected >= 200, got {self.drift_window_rows}")
        if not 0 < self.drift_psi_threshold < float("inf"):
            raise SettingsError(f"drift_psi_threshold: expected a finite number > 0, got {self.drift_psi_threshold}")
        if not 0 <= self.drift_pvalue_threshold <= 1:
            raise SettingsError(f"drift_pvalue_threshold: expected 0..1, got {self.drift_pvalue_threshold}")

    @classmethod
    def from_sources(
        cls, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> ServerSettings:
        """Merge flags (None = not given) over ORTSERVE_* environment variables over defaults."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            flag = flags.get(f.name)
            raw: Any = flag if flag is not None else env.get(ENV_PREFIX + f.name.upper())
            if raw is None or (flag is None and raw == ""):  # an empty variable counts as unset
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        return cls(**values)


def env_name(setting: str) -> str:
    """The environment variable of a setting, e.g. grpc_port -> ORTSERVE_GRPC_PORT."""
    return ENV_PREFIX + setting.upper()


def _coerce(name: str, type_name: Any, raw: Any) -> Any:
    kind = str(type_name)
    if isinstance(raw, list):  # a repeatable flag (load_model): its values, comma-separated
        raw = ",".join(str(item) for item in raw)
    try:
        if kind == "bool":
            return _boolean(raw)
        if "Path" in kind:
            return Path(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except ValueError:
        raise SettingsError(
            f"{name}: expected {kind}, got {raw!r} (from {env_name(name)} or --{name.replace('_', '-')})"
        ) from None


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(raw)


def _check_port(name: str, port: int, *, allow_disabled: bool) -> None:
    low = -1 if allow_disabled else 0
    if not low <= port <= 65535:
        raise SettingsError(f"{name}: expected {low}..65535, got {port}")


