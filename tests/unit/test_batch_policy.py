from __future__ import annotations

import pytest
from google.protobuf import text_format

from ortserve.batching import BatchPolicy, QueuePolicy
from ortserve.batching.shapes import ShapePlanner
from ortserve.errors import ModelLoadError
from ortserve.repository.batch_policy import batch_policy, shape_ladder
from ortserve.repository.model import MODEL_PARAMETERS
from ortserve_client.proto import model_config_pb2 as mc


def target(value: str) -> str:
    return f'parameters {{ key: "latency_target_ms" value: {{ string_value: "{value}" }} }}'


def config(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig(name="m"))


def test_triton_dynamic_batching_maps_onto_the_policy() -> None:
    policy = batch_policy(
        config(
            """
            max_batch_size: 16
            dynamic_batching {
              preferred_batch_size: [4, 8] max_queue_delay_microseconds: 250
              priority_levels: 3 default_priority_level: 2
              default_queue_policy { max_queue_size: 100 default_timeout_microseconds: 5000 }
              priority_queue_policy { key: 1 value: { timeout_action: DELAY allow_timeout_override: true } }
            }
            """
        )
    )
    assert policy.batching and policy.max_batch_size == 16
    assert policy.preferred_batch_sizes == (4, 8) and policy.max_queue_delay_us == 250
    assert (policy.priority_levels, policy.default_priority_level) == (3, 2)
    assert policy.queue_policy(2) == QueuePolicy(max_queue_size=100, default_timeout_us=5000)
    assert policy.queue_policy(1) == QueuePolicy(allow_timeout_override=True, delay_on_timeout=True)
    assert [policy.level_of(p) for p in (0, 1, 3, 9)] == [2, 1, 3, 3]
    assert policy.latency_target_ms == 0
    assert not policy.preserve_ordering


def test_preserve_ordering_maps_onto_the_policy() -> None:
    assert batch_policy(config("max_batch_size: 8 dynamic_batching { preserve_ordering: true }")).preserve_ordering
    assert not batch_policy(config("max_batch_size: 8 dynamic_batching { }")).preserve_ordering


def test_without_dynamic_batching_requests_run_alone() -> None:
    policy = batch_policy(config("max_batch_size: 16"), default_latency_target_ms=50)
    assert not policy.batching and policy.max_batch_size == 16
    assert policy.latency_target_ms == 0  # the controller only shapes batches it forms


def test_latency_target_from_the_config_or_the_server_default() -> None:
    assert batch_policy(config("max_batch_size: 8 dynamic_batching {}"), 50).latency_target_ms == 50
    tuned = config("max_batch_size: 8 dynamic_batching {} " + target("12.5"))
    assert batch_policy(tuned, 50).latency_target_ms == 12.5


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", ""])
def test_a_bad_latency_target_fails_the_load_with_its_value(value: str) -> None:
    bad = config("max_batch_size: 8 dynamic_batching {} " + target(value))
    with pytest.raises(ModelLoadError, match=f"latency_target_ms must be a number of milliseconds >= 0.*got '{value}'"):
        batch_policy(bad)


def shapes(value: str) -> str:
    return f'parameters {{ key: "batch_shapes" value: {{ string_value: "{value}" }} }}'


def test_shape_ladder_pads_by_few_rows_with_few_shapes() -> None:
    assert shape_ladder(0) == shape_ladder(1) == ()
    assert shape_ladder(5) == (1, 2, 4, 5)
    assert shape_ladder(64) == (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64)
    ladder = shape_ladder(128)
    assert ladder[:5] == (1, 2, 4, 8, 16) and ladder[-1] == 128 and len(ladder) == 19
    big = shape_ladder(1024)
    assert big[-1] == 1024 and len(big) <= 23 and max(b - a for a, b in zip(big, big[1:], strict=False)) == 64


def test_batch_shapes_auto_pads_on_cuda_only() -> None:
    auto = config("max_batch_size: 128 dynamic_batching {}")
    assert batch_policy(auto, device="cuda").batch_shapes == shape_ladder(128)
    assert batch_policy(auto, device="cpu").batch_shapes == ()
    upper = config("max_batch_size: 128 dynamic_batching {} " + shapes("AUTO"))
    assert batch_policy(upper, device="cuda").batch_shapes == shape_ladder(128)
    off = config("max_batch_size: 128 dynamic_batching {} " + shapes("off"))
    assert batch_policy(off, device="cuda").batch_shapes == ()
    assert batch_policy(config("max_batch_size: 0"), device="cuda").batch_shapes == ()


def test_listed_batch_shapes_apply_on_any_device_with_max_batch_size_added() -> None:
    listed = config("max_batch_size: 16 dynamic_batching {} " + shapes("8, 2,4"))
    policy = batch_policy(listed, device="cpu")
    assert policy.batch_shapes == (2, 4, 8, 16)
    assert [ShapePlanner(policy.batch_shapes).fit(n) for n in (1, 2, 3, 5, 8, 9, 16)] == [2, 2, 4, 8, 8, 16, 16]


@pytest.mark.parametrize("value", ["0,4", "4,17", "a,b", "", "pow2"])
def test_bad_batch_shapes_fail_the_load_with_their_value(value: str) -> None:
    bad = config("max_batch_size: 16 dynamic_batching {} " + shapes(value))
    with pytest.raises(ModelLoadError, match=f"batch_shapes must be .*in 1..16.*got '{value}'"):
        batch_policy(bad)


def test_without_shapes_a_batch_runs_as_formed() -> None:
    planner = ShapePlanner(BatchPolicy(max_batch_size=8).batch_shapes)
    assert [planner.rows_for(n) for n in (1, 3, 8, 2)] == [1, 3, 8, 2]


def hold(value: str) -> str:
    return f'parameters {{ key: "batch_hold" value: {{ string_value: "{value}" }} }}'


def test_batch_hold_is_on_unless_turned_off() -> None:
    assert batch_policy(config("max_batch_size: 8 dynamic_batching {}")).hold
    assert batch_policy(config("max_batch_size: 8 dynamic_batching {} " + hold(" Auto "))).hold
    assert not batch_policy(config("max_batch_size: 8 dynamic_batching {} " + hold("off"))).hold
    assert "batch_hold" in MODEL_PARAMETERS  # not warned about as an unknown parameter


@pytest.mark.parametrize("value", ["on", "0", ""])
def test_a_bad_batch_hold_fails_the_load_with_its_value(value: str) -> None:
    bad = config("max_batch_size: 8 dynamic_batching {} " + hold(value))
    with pytest.raises(ModelLoadError, match=f'batch_hold must be "auto" .* or "off" .*got \'{value}\''):
        batch_policy(bad)
