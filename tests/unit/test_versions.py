"""Version directories and the version policy (Triton's semantics)."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from ortserve.errors import ModelLoadError
from ortserve.repository.model_config import read_config
from ortserve.repository.versions import default_version, list_versions, select_versions
from ortserve_client.proto import model_config_pb2 as mc


def policy(text: str = "") -> mc.ModelVersionPolicy:
    return text_format.Parse(text, mc.ModelVersionPolicy())


def test_list_versions_keeps_positive_integer_dirs_only(tmp_path: Path) -> None:
    for name in ["1", "3", "10", "2", "0", "-1", "01x", "007", "abc", ".1", "٣", "1" * 30]:
        (tmp_path / name).mkdir()
    (tmp_path / "5").write_text("a file, not a version")
    (tmp_path / "config.pbtxt").write_text("")
    assert list_versions(tmp_path) == [1, 2, 3, 10]  # numeric order, not "10" < "2"


def test_list_versions_of_empty_dir(tmp_path: Path) -> None:
    assert list_versions(tmp_path) == []


def test_list_versions_of_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model 'gone': cannot list"):
        list_versions(tmp_path / "gone")


def test_unset_policy_serves_the_latest() -> None:
    assert select_versions(policy(), [1, 3, 2]) == [3]


@pytest.mark.parametrize(("count", "expected"), [(1, [7]), (2, [3, 7]), (5, [1, 3, 7])])
def test_latest_n(count: int, expected: list[int]) -> None:
    assert select_versions(policy(f"latest {{ num_versions: {count} }}"), [7, 1, 3]) == expected


def test_latest_zero_is_an_error() -> None:
    with pytest.raises(ModelLoadError, match="model 'm': version_policy latest { } serves no version"):
        select_versions(policy("latest { num_versions: 0 }"), [1], model_name="m")


def test_all() -> None:
    assert select_versions(policy("all {}"), [4, 2, 2, 9]) == [2, 4, 9]


def test_specific() -> None:
    assert select_versions(policy("specific { versions: [3, 1] }"), [1, 2, 3]) == [1, 3]


def test_specific_missing_version_is_an_error() -> None:
    with pytest.raises(ModelLoadError) as caught:
        select_versions(policy("specific { versions: [1, 4, 5] }"), [1, 2], model_name="resnet")
    message = str(caught.value)
    assert message.startswith("model 'resnet': version_policy specific")
    assert "asks for versions [4, 5] that have no version directory; found versions [1, 2]" in message


def test_specific_empty_is_an_error() -> None:
    with pytest.raises(ModelLoadError, match="lists no version"):
        select_versions(policy("specific {}"), [1])


@pytest.mark.parametrize("text", ["", "all {}", "latest { num_versions: 3 }"])
def test_nothing_to_serve_is_an_error(text: str) -> None:
    with pytest.raises(ModelLoadError, match="model 'm': no version to serve"):
        select_versions(policy(text), [], model_name="m")


def test_policy_from_config_pbtxt(tmp_path: Path) -> None:
    model_dir = tmp_path / "add_sub"
    for version in (1, 2, 3):
        (model_dir / str(version)).mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text("version_policy: { specific: { versions: [1, 3] } }\n")
    config = read_config(model_dir)
    assert select_versions(config.version_policy, list_versions(model_dir)) == [1, 3]


def test_default_version_is_the_highest() -> None:
    assert default_version([1, 9, 3]) == 9


def test_default_version_needs_a_version() -> None:
    with pytest.raises(ValueError, match="at least one"):
        default_version([])
