"""ServerSettings (flag > ORTSERVE_* environment > default, validated once) and the CLI parser."""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from ortserve import cli
from ortserve.config import ServerSettings, SettingsError, env_name

FIELDS = [f.name for f in fields(ServerSettings)]


def flags(**given: Any) -> dict[str, Any]:
    """The flags the CLI hands over: every setting, None where not given."""
    return {name: given.get(name) for name in FIELDS}


# -- defaults and sources ----------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    s = ServerSettings()
    assert s.model_repository is None
    assert (s.host, s.grpc_port, s.http_port, s.device) == ("0.0.0.0", 8001, 8002, "auto")
    assert (s.intra_op_threads, s.default_max_batch_size, s.max_message_bytes) == (0, 32, 2**31 - 1)
    assert (s.drain_seconds, s.grace_seconds, s.log_level, s.event_loop) == (0.0, 30.0, "info", "auto")


def test_from_sources_with_nothing_given_is_the_defaults() -> None:
    assert ServerSettings.from_sources(flags(), environ={}) == ServerSettings()
    assert ServerSettings.from_sources({}, environ={}) == ServerSettings()


def test_environment_overrides_defaults_and_is_coerced(tmp_path: Path) -> None:
    env = {
        "ORTSERVE_MODEL_REPOSITORY": str(tmp_path),
        "ORTSERVE_GRPC_PORT": "9001",
        "ORTSERVE_DRAIN_SECONDS": "2.5",
        "ORTSERVE_DEVICE": "cpu",
        "ORTSERVE_UNRELATED": "ignored",
        "GRPC_PORT": "1",  # no prefix: not ours
    }
    s = ServerSettings.from_sources(flags(), environ=env)
    assert s.model_repository == tmp_path and isinstance(s.model_repository, Path)
    assert s.grpc_port == 9001 and isinstance(s.grpc_port, int)
    assert s.drain_seconds == 2.5
    assert s.device == "cpu"
    assert s.http_port == 8002  # untouched: default


def test_flag_overrides_environment_which_overrides_default() -> None:
    env = {"ORTSERVE_GRPC_PORT": "9001", "ORTSERVE_HTTP_PORT": "9002"}
    s = ServerSettings.from_sources(flags(grpc_port=7001), environ=env)
    assert s.grpc_port == 7001  # flag
    assert s.http_port == 9002  # environment
    assert s.intra_op_threads == 0  # default


def test_a_flag_given_as_zero_still_wins() -> None:
    s = ServerSettings.from_sources(flags(grpc_port=0), environ={"ORTSERVE_GRPC_PORT": "9001"})
    assert s.grpc_port == 0


def test_from_sources_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORTSERVE_LOG_LEVEL", "debug")
    assert ServerSettings.from_sources(flags()).log_level == "debug"


ENV_EXAMPLES: dict[str, tuple[str, Any]] = {
    "model_repository": (".", Path(".")),
    "host": ("127.0.0.1", "127.0.0.1"),
    "grpc_port": ("1234", 1234),
    "http_port": ("-1", -1),
    "device": ("cuda", "cuda"),
    "intra_op_threads": ("3", 3),
    "gil_switch_interval_ms": ("0.5", 0.5),
    "latency_target_ms": ("50", 50.0),
    "default_max_batch_size": ("7", 7),
    "max_message_bytes": ("4096", 4096),
    "drain_seconds": ("1.5", 1.5),
    "grace_seconds": ("0", 0.0),
    "log_level": ("warning", "warning"),
    "event_loop": ("asyncio", "asyncio"),
    "max_inflight_requests": ("0", 0),
    "max_tensor_elements": ("1000", 1000),
    "shared_memory": ("off", "off"),
    "tls_cert": ("server.pem", Path("server.pem")),
    "tls_key": ("server.key", Path("server.key")),
    "tls_client_ca": ("clients-ca.pem", Path("clients-ca.pem")),
    "auth_api_keys_file": ("keys.toml", Path("keys.toml")),
    "auth_jwt_secret_file": ("jwt.secret", Path("jwt.secret")),
    "auth_jwt_public_key_file": ("jwt.pub.pem", Path("jwt.pub.pem")),
    "auth_jwt_jwks_file": ("jwks.json", Path("jwks.json")),
    "auth_jwt_issuer": ("https://issuer.example", "https://issuer.example"),
    "auth_jwt_audience": ("ortserve", "ortserve"),
    "auth_jwt_leeway_seconds": ("5", 5.0),
    "rate_limit_inference_per_s": ("100", 100.0),
    "rate_limit_inference_burst": ("200", 200),
    "rate_limit_metadata_per_s": ("10.5", 10.5),
    "rate_limit_metadata_burst": ("20", 20),
    "rate_limit_control_per_s": ("0.1", 0.1),
    "rate_limit_control_burst": ("2", 2),
    "audit_log_file": ("audit.jsonl", Path("audit.jsonl")),
    "log_format": ("json", "json"),
    "access_log_ratio": ("0.01", 0.01),
    "triton_metrics": ("false", False),
    "drift_interval_seconds": ("0", 0.0),
    "drift_window_rows": ("500", 500),
    "drift_psi_threshold": ("0.25", 0.25),
    "drift_pvalue_threshold": ("0.01", 0.01),
    "model_control_mode": ("explicit", "explicit"),
    "repository_poll_seconds": ("0.5", 0.5),
    "load_model": ("iris,add_sub", "iris,add_sub"),
    "response_cache_bytes": ("1048576", 1048576),
    "require_validation": ("true", True),
}
"""An environment value for every setting, and the setting it makes (never the default)."""


def test_every_setting_has_an_environment_example() -> None:
    assert sorted(ENV_EXAMPLES) == sorted(FIELDS), "a new setting needs an example in ENV_EXAMPLES"


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_can_come_from_the_environment(name: str) -> None:
    text, value = ENV_EXAMPLES[name]
    s = ServerSettings.from_sources(flags(), environ={env_name(name): text})
    assert getattr(s, name) == value and type(getattr(s, name)) is type(value)
    assert value != getattr(ServerSettings(), name)


def test_env_name() -> None:
    assert env_name("grpc_port") == "ORTSERVE_GRPC_PORT"
    assert env_name("max_message_bytes") == "ORTSERVE_MAX_MESSAGE_BYTES"


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ORTSERVE_GRPC_PORT": "eighty"},
            r"grpc_port: expected int, got 'eighty' \(from ORTSERVE_GRPC_PORT or --grpc-port\)",
        ),
        ({"ORTSERVE_GRPC_PORT": "80.5"}, "grpc_port: expected int"),
        ({"ORTSERVE_GRACE_SECONDS": "soon"}, "grace_seconds: expected float, got 'soon'"),
    ],
)
def test_values_that_do_not_parse_name_the_setting_and_its_sources(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServerSettings.from_sources(flags(), environ=env)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"device": "gpu"}, "device: expected one of auto, cpu, cuda, got 'gpu'"),
        ({"grpc_port": -1}, r"grpc_port: expected 0\.\.65535, got -1"),
        ({"grpc_port": 65536}, r"grpc_port: expected 0\.\.65535, got 65536"),
        ({"http_port": -2}, r"http_port: expected -1\.\.65535, got -2"),
        ({"http_port": 70000}, r"http_port: expected -1\.\.65535, got 70000"),
        ({"latency_target_ms": -1.0}, "latency_target_ms: expected >= 0"),
        ({"intra_op_threads": -1}, "intra_op_threads: expected >= 0, got -1"),
        ({"gil_switch_interval_ms": -0.5}, r"gil_switch_interval_ms: expected 0 \(Python's default\) to 100, got -0.5"),
        ({"gil_switch_interval_ms": 101.0}, "gil_switch_interval_ms: expected 0"),
        ({"gil_switch_interval_ms": math.nan}, "gil_switch_interval_ms: expected 0"),
        ({"default_max_batch_size": 0}, "default_max_batch_size: expected >= 1, got 0"),
        ({"max_message_bytes": 1023}, r"max_message_bytes: expected 1024\.\.2147483647, got 1023"),
        ({"max_message_bytes": 2**31}, "max_message_bytes: expected 1024..2147483647, got 2147483648"),
        ({"drain_seconds": -0.1}, "drain_seconds and grace_seconds must be >= 0"),
        ({"grace_seconds": -1.0}, "drain_seconds and grace_seconds must be >= 0"),
        ({"drain_seconds": math.nan}, "drain_seconds and grace_seconds must be >= 0"),
        ({"grace_seconds": math.nan}, "drain_seconds and grace_seconds must be >= 0"),
        ({"log_level": "verbose"}, "log_level: expected debug, info, warning or error, got 'verbose'"),
        ({"event_loop": "trio"}, "event_loop: expected one of auto, uvloop, asyncio, got 'trio'"),
        ({"max_inflight_requests": -1}, r"max_inflight_requests: expected >= 0 \(0 = unbounded\), got -1"),
        ({"max_tensor_elements": 0}, "max_tensor_elements: expected >= 1, got 0"),
        ({"shared_memory": "cuda"}, "shared_memory: expected one of system, off, got 'cuda'"),
        ({"auth_jwt_leeway_seconds": -1.0}, "auth_jwt_leeway_seconds: expected a finite number >= 0"),
        ({"rate_limit_inference_per_s": math.nan}, "rate_limit_inference_per_s: expected a finite number >= 0"),
        ({"rate_limit_metadata_per_s": math.inf}, "rate_limit_metadata_per_s: expected a finite number >= 0"),
        ({"rate_limit_control_burst": -1}, r"rate_limit_control_burst: expected >= 0 \(0 = the rate rounded up\)"),
        ({"log_format": "xml"}, "log_format: expected text or json, got 'xml'"),
        ({"access_log_ratio": 1.5}, r"access_log_ratio: expected 0\.\.1, got 1\.5"),
        ({"access_log_ratio": math.nan}, r"access_log_ratio: expected 0\.\.1"),
        ({"drift_interval_seconds": -1.0}, r"drift_interval_seconds: expected a finite number >= 0 \(0 = off\)"),
        ({"drift_window_rows": 199}, "drift_window_rows: expected >= 200, got 199"),
        ({"drift_psi_threshold": 0.0}, "drift_psi_threshold: expected a finite number > 0"),
        ({"drift_pvalue_threshold": 2.0}, r"drift_pvalue_threshold: expected 0\.\.1, got 2\.0"),
        ({"model_control_mode": "manual"}, "model_control_mode: expected one of none, poll, explicit, got 'manual'"),
        ({"repository_poll_seconds": 0.0}, "repository_poll_seconds: expected a finite number > 0, got 0.0"),
        ({"repository_poll_seconds": math.nan}, "repository_poll_seconds: expected a finite number > 0"),
        ({"response_cache_bytes": -1}, r"response_cache_bytes: expected >= 0 \(0 = off\), got -1"),
    ],
)
def test_invalid_values_are_refused_with_what_is_allowed(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ServerSettings(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"grpc_port": 0},
        {"grpc_port": 65535},
        {"http_port": -1},
        {"http_port": 0},
        {"max_message_bytes": 1024},
        {"drain_seconds": 0.0, "grace_seconds": 0.0},
        {"device": "cuda"},
        {"event_loop": "uvloop"},
    ],
)
def test_boundary_values_are_accepted(changes: dict[str, Any]) -> None:
    s = ServerSettings(**changes)
    assert all(getattr(s, k) == v for k, v in changes.items())


def test_model_repository_must_be_an_existing_directory(tmp_path: Path) -> None:
    assert ServerSettings(model_repository=tmp_path).model_repository == tmp_path
    with pytest.raises(SettingsError, match="model_repository: .*missing is not a directory"):
        ServerSettings(model_repository=tmp_path / "missing")
    a_file = tmp_path / "model.onnx"
    a_file.write_bytes(b"")
    with pytest.raises(SettingsError, match="is not a directory"):
        ServerSettings.from_sources(flags(), environ={"ORTSERVE_MODEL_REPOSITORY": str(a_file)})


def test_settings_errors_are_value_errors() -> None:
    assert issubclass(SettingsError, ValueError)


def test_settings_are_frozen() -> None:
    s = ServerSettings()
    with pytest.raises(AttributeError):
        s.grpc_port = 1  # type: ignore[misc]


# -- the CLI -----------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(list(argv))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_every_setting_is_a_serve_flag_defaulting_to_not_given() -> None:
    args = vars(parse("serve"))
    assert args.pop("command") == "serve"
    assert sorted(args) == sorted(FIELDS)
    assert all(value is None for value in args.values())  # None: fall through to env / default


FLAG_EXAMPLES: list[tuple[str, str, Any]] = [
    ("model_repository", "/models", Path("/models")),
    ("host", "127.0.0.1", "127.0.0.1"),
    ("grpc_port", "9001", 9001),
    ("http_port", "-1", -1),
    ("device", "cpu", "cpu"),
    ("intra_op_threads", "2", 2),
    ("gil_switch_interval_ms", "0.2", 0.2),
    ("latency_target_ms", "25.5", 25.5),
    ("default_max_batch_size", "16", 16),
    ("max_message_bytes", "65536", 65536),
    ("drain_seconds", "1.5", 1.5),
    ("grace_seconds", "10", 10.0),
    ("log_level", "error", "error"),
    ("event_loop", "asyncio", "asyncio"),
    ("max_inflight_requests", "64", 64),
    ("max_tensor_elements", "4096", 4096),
    ("shared_memory", "off", "off"),
    ("tls_cert", "/tls/server.pem", Path("/tls/server.pem")),
    ("tls_key", "/tls/server.key", Path("/tls/server.key")),
    ("tls_client_ca", "/tls/ca.pem", Path("/tls/ca.pem")),
    ("auth_api_keys_file", "/etc/ortserve/keys.toml", Path("/etc/ortserve/keys.toml")),
    ("auth_jwt_secret_file", "/run/secrets/jwt", Path("/run/secrets/jwt")),
    ("auth_jwt_public_key_file", "/etc/jwt.pem", Path("/etc/jwt.pem")),
    ("auth_jwt_jwks_file", "/etc/jwks.json", Path("/etc/jwks.json")),
    ("auth_jwt_issuer", "issuer", "issuer"),
    ("auth_jwt_audience", "aud", "aud"),
    ("auth_jwt_leeway_seconds", "0", 0.0),
    ("rate_limit_inference_per_s", "50", 50.0),
    ("rate_limit_inference_burst", "5", 5),
    ("rate_limit_metadata_per_s", "2.5", 2.5),
    ("rate_limit_metadata_burst", "3", 3),
    ("rate_limit_control_per_s", "1", 1.0),
    ("rate_limit_control_burst", "1", 1),
    ("audit_log_file", "/var/log/audit.jsonl", Path("/var/log/audit.jsonl")),
    ("log_format", "json", "json"),
    ("access_log_ratio", "0.5", 0.5),
    ("triton_metrics", "off", "off"),  # a bool: the text is coerced by from_sources (test below)
    ("drift_interval_seconds", "30", 30.0),
    ("drift_window_rows", "4096", 4096),
    ("drift_psi_threshold", "0.1", 0.1),
    ("drift_pvalue_threshold", "0.05", 0.05),
    ("model_control_mode", "poll", "poll"),
    ("repository_poll_seconds", "2", 2.0),
    ("load_model", "iris", ["iris"]),  # repeatable: from_sources joins the list (test below)
    ("response_cache_bytes", "0", 0),
    ("require_validation", "yes", "yes"),  # a bool: the text is coerced by from_sources
]


def test_every_flag_has_an_example() -> None:
    assert sorted(row[0] for row in FLAG_EXAMPLES) == sorted(FIELDS), "a new setting needs a row"


@pytest.mark.parametrize(("name", "text", "value"), FLAG_EXAMPLES)
def test_each_flag_parses_to_its_setting_type(name: str, text: str, value: Any) -> None:
    parsed = getattr(parse("serve", flag(name), text), name)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(("name", "text"), [("device", "gpu"), ("event_loop", "trio"), ("grpc_port", "x")])
def test_bad_flag_values_are_refused_by_the_parser(name: str, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("serve", flag(name), text)
    assert caught.value.code == 2
    assert flag(name) in capsys.readouterr().err


def test_serve_help_shows_every_flag_its_env_var_default_and_doc(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as caught:
        parse("serve", "--help")
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    defaults = ServerSettings()
    for f in fields(ServerSettings):
        assert flag(f.name) in text
        assert f"env {env_name(f.name)}" in text
        assert f"default {getattr(defaults, f.name)}" in text
    assert "Model repository directory; None serves the bundled demo repository." in text
    assert "gRPC port (KServe V2 / Triton protocol and grpc.health.v1); 0 picks a free port." in text


def test_main_merges_flags_over_environment_and_hands_settings_to_serve(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import ortserve.app

    served: list[ServerSettings] = []

    def fake_serve(settings: ServerSettings) -> int:
        served.append(settings)
        return 0

    monkeypatch.setattr(ortserve.app, "serve", fake_serve)
    monkeypatch.setenv("ORTSERVE_GRPC_PORT", "9001")
    monkeypatch.setenv("ORTSERVE_HTTP_PORT", "9002")
    assert cli.main(["serve", "--grpc-port", "7001", "--model-repository", str(tmp_path)]) == 0
    (s,) = served
    assert (s.grpc_port, s.http_port, s.model_repository) == (7001, 9002, tmp_path)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["serve", "--grpc-port", "70000"], {}, "grpc_port: expected 0..65535, got 70000"),
        (["serve"], {"ORTSERVE_DEVICE": "gpu"}, "device: expected one of auto, cpu, cuda, got 'gpu'"),
        (["serve"], {"ORTSERVE_HTTP_PORT": "http"}, "http_port: expected int, got 'http'"),
    ],
)
def test_main_reports_bad_settings_and_exits_2_without_serving(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in FIELDS:
        monkeypatch.delenv(env_name(name), raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ortserve: error: ")
    assert message in err


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse("--version")
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("ortserve ")


def test_an_empty_environment_variable_counts_as_unset() -> None:
    settings = ServerSettings.from_sources({}, {"ORTSERVE_MODEL_REPOSITORY": "", "ORTSERVE_GRPC_PORT": ""})
    assert settings.model_repository is None and settings.grpc_port == 8001


def test_choice_flags_are_case_insensitive() -> None:
    args = cli.build_parser().parse_args(["serve", "--log-level", "INFO", "--device", "CPU"])
    assert args.log_level == "info" and args.device == "cpu"


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("ON", True), ("1", True), ("yes", True), ("false", False), ("Off", False), ("0", False),
     ("no", False)],
)
def test_boolean_settings_read_the_usual_words(text: str, value: bool) -> None:
    from_env = ServerSettings.from_sources(flags(), environ={"ORTSERVE_TRITON_METRICS": text})
    from_flag = ServerSettings.from_sources(vars(parse("serve", "--triton-metrics", text)), environ={})
    assert from_env.triton_metrics is value and from_flag.triton_metrics is value


def test_a_boolean_setting_that_does_not_parse_names_the_setting() -> None:
    with pytest.raises(SettingsError, match=r"triton_metrics: expected bool, got 'maybe'"):
        ServerSettings.from_sources(flags(), environ={"ORTSERVE_TRITON_METRICS": "maybe"})


def test_load_model_repeats_or_takes_commas_and_a_bare_boolean_flag_means_true() -> None:
    args = vars(parse("serve", "--model-control-mode", "explicit", "--load-model", "a,b", "--load-model", "c",
                      "--require-validation"))
    settings = ServerSettings.from_sources(args, environ={})
    assert settings.load_model == "a,b,c"
    assert settings.require_validation is True
    assert ServerSettings.from_sources(vars(parse("serve")), environ={}).require_validation is False
