"""Version weights: the config syntax, what is left out when a version is not served, the choice."""

from __future__ import annotations

import math
import random
import time
from collections import Counter

import pytest
from google.protobuf import text_format

from ortserve.errors import ModelLoadError
from ortserve.repository.routing import (
    WEIGHTS_PARAMETER,
    VersionRouter,
    config_weights,
    effective_routing,
    parse_weights,
)
from ortserve_client.proto import model_config_pb2 as mc


@pytest.mark.parametrize(
    ("text", "weights"),
    [
        ("1:90,2:10", {1: 90.0, 2: 10.0}),
        (" 1 : 90 , 2 : 10 ", {1: 90.0, 2: 10.0}),
        ("3:1", {3: 1.0}),
        ("1:0,2:100", {1: 0.0, 2: 100.0}),
        ("1:0.5,2:0.25,7:1e2", {1: 0.5, 2: 0.25, 7: 100.0}),
        ("", {}),
        ("   ", {}),
    ],
)
def test_weights_syntax(text: str, weights: dict[int, float]) -> None:
    assert parse_weights(text) == weights


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1=90", "bad pair '1=90'"),
        ("1:90,", "bad pair ''"),
        ("0:5", "bad pair '0:5'"),
        ("-1:5", "bad pair '-1:5'"),
        ("v1:5", "bad pair 'v1:5'"),
        ("1:-5", "bad pair '1:-5'"),
        ("1:nan", "bad pair '1:nan'"),
        ("1:inf", "bad pair '1:inf'"),
        ("1:ten", "bad pair '1:ten'"),
        ("1:5,1:6", "version 1 is given twice"),
        ("1:0,2:0", "every weight is 0"),
    ],
)
def test_bad_weights_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=rf"model 'm': parameter version_weights .*{message}") as info:
        parse_weights(text, model="m")
    if "bad pair" in message:
        assert '"VERSION:WEIGHT" pairs separated by commas' in str(info.value)


def test_weights_come_from_the_config_parameter() -> None:
    config = text_format.Parse(
        'name: "m" parameters { key: "version_weights" value: { string_value: "1:3,2:1" } }', mc.ModelConfig()
    )
    assert WEIGHTS_PARAMETER == "version_weights"
    assert config_weights(config) == {1: 3.0, 2: 1.0}
    assert config_weights(mc.ModelConfig()) == {}


def test_effective_routing_keeps_served_versions_and_notes_the_others() -> None:
    routing = effective_routing({1: 90, 2: 10, 5: 3}, [1, 2])
    assert routing.weights == {1: 90, 2: 10}
    assert routing.notes == ("weight 3 of version 5 ignored: version 5 is not served",)


def test_removing_the_canary_sends_everything_to_the_rest() -> None:
    assert effective_routing({1: 90, 2: 10}, [1]).weights == {1: 90}


def test_no_served_weight_falls_back_to_the_default() -> None:
    routing = effective_routing({2: 100, 1: 0}, [1])
    assert routing.weights == {}
    assert "the default version answers every request" in routing.notes[-1]


def test_no_weights_no_routing() -> None:
    assert effective_routing({}, [1, 2]).weights == {}
    assert effective_routing({}, [1, 2]).notes == ()


def test_router_follows_the_weights() -> None:
    random.seed(1234)
    router = VersionRouter({1: "a", 2: "b", 3: "c"}, {1: 70, 2: 20, 3: 10})
    n = 100_000
    counts = Counter(router.choose() for _ in range(n))
    for target, p in (("a", 0.7), ("b", 0.2), ("c", 0.1)):
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[target] - n * p) < 5 * sigma, (target, counts)
    assert router.share(1) == pytest.approx(0.7) and router.share(4) == 0.0


def test_router_never_picks_a_zero_weight() -> None:
    router = VersionRouter({1: "old", 2: "new"}, {1: 0, 2: 1})
    assert {router.choose() for _ in range(10_000)} == {"new"}


def test_router_needs_a_target_for_each_weight() -> None:
    with pytest.raises(ValueError, match="no target"):
        VersionRouter({1: "a"}, {1: 1, 2: 1})
    with pytest.raises(ValueError, match="at least one weight"):
        VersionRouter({1: "a"}, {1: 0})


def test_a_choice_is_cheap() -> None:
    router = VersionRouter({1: "a", 2: "b"}, {1: 90, 2: 10})
    choose = router.choose
    start = time.perf_counter()
    for _ in range(200_000):
        choose()
    per_choice = (time.perf_counter() - start) / 200_000
    assert per_choice < 5e-6, f"{per_choice * 1e9:.0f} ns per choice"
