from __future__ import annotations

import pytest
from google.protobuf import text_format

from ortserve.batching import QueuePolicy
from ortserve.errors import ModelLoadError
from ortserve.repository.batch_policy import batch_policy
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
