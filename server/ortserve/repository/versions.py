"""Model versions: which version directories exist, and which of them the version policy serves.

A version is a subdirectory of the model directory named by a positive integer in canonical
form ("1", "42"). Everything else there is ignored: config.pbtxt and other files, "0", "-1",
"01x", hidden directories, and zero-padded names such as "007". Padded names are ignored rather
than read as 7 because the loader finds a version's files at `<model_dir>/<version>`: "007"
would be served as version 7 from a directory "7" that does not exist, and "7" beside "007"
would be two directories for one version.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from google.protobuf import text_format

from ortserve.errors import ModelLoadError
from ortserve_client.proto import model_config_pb2 as mc

# Versions travel as int64 in the protocol; a longer name cannot be asked for by any client.
_MAX_VERSION: Final = 2**63 - 1


def list_versions(model_dir: Path) -> list[int]:
    """The version numbers found under `model_dir`, ascending; ModelLoadError if it cannot be read."""
    try:
        entries = list(model_dir.iterdir())
    except OSError as exc:
        raise ModelLoadError(f"model '{model_dir.name}': cannot list {model_dir}: {exc}") from exc
    versions: list[int] = []
    for entry in entries:
        name = entry.name
        # isascii: str.isdigit also accepts digits of other scripts, which int() would read.
        if not (name.isascii() and name.isdigit()) or name.startswith("0"):
            continue
        version = int(name)
        if version <= _MAX_VERSION and entry.is_dir():
            versions.append(version)
    return sorted(versions)


def select_versions(
    policy: mc.ModelVersionPolicy, available: Sequence[int], *, model_name: str = ""
) -> list[int]:
    """The versions to serve under `policy` (Triton's semantics), ascending.

    Unset policy: `latest { num_versions: 1 }`. `latest { num_versions: N }`: the N highest
    available. `all`: every available version. `specific { versions: [...] }`: exactly those,
    and a listed version that does not exist raises ModelLoadError naming it (Triton only logs
    it; a silently dropped version is a deployment surprise). Selecting nothing raises
    ModelLoadError too, as Triton does: a model with no version to serve cannot be loaded.
    `model_name` only makes the messages name the model.
    """
    where = f"model '{model_name}': " if model_name else ""
    shown = text_format.MessageToString(policy, as_one_line=True) or "unset (latest 1)"
    have = sorted(set(available))
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        chosen = have
    elif choice == "specific":
        wanted = sorted(set(policy.specific.versions))
        if not wanted:
            raise ModelLoadError(
                f"{where}version_policy {shown} lists no version; expected at least one version number"
            )
        missing = [v for v in wanted if v not in have]
        if missing:
            raise ModelLoadError(
                f"{where}version_policy {shown} asks for versions {missing} that have no version "
                f"directory; found versions {have}"
            )
        chosen = wanted
    else:
        count = policy.latest.num_versions if choice == "latest" else 1
        if count == 0:
            raise ModelLoadError(
                f"{where}version_policy {shown} serves no version; expected num_versions >= 1"
            )
        chosen = have[-count:]
    if not chosen:
        raise ModelLoadError(
            f"{where}no version to serve under version_policy {shown}: found no version directory; "
            "expected a positive integer subdirectory such as 1/ holding the model"
        )
    return chosen


def default_version(served: Sequence[int]) -> int:
    """The version a request without one gets: the highest served. `served` must not be empty."""
    if not served:
        raise ValueError("default_version needs at least one served version")
    return max(served)
