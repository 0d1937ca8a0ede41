"""Validation records: `<model>/<version>/validation.json`, written by `ortserve validate`.

A record says whether one version's model file passed its validation (held-out data, metric and
latency thresholds, output sanity) and carries the SHA-256 of the model file it judged. With the
server's `require_validation` setting, a version is promoted to serve only when its record
passed and its model file still has that hash: a record never vouches for other bytes. A
`latest` version policy then counts only versions with a passing record, so a new version waits
unserved (and its predecessor serves) until it is validated.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

from ortserve.errors import ModelLoadError

RECORD_FILENAME: Final = "validation.json"
RECORD_FORMAT: Final = "ortserve-validation/1"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_record(version_dir: Path, record: dict[str, Any]) -> Path:
    """Write the record atomically (temporary file, then rename) and return its path."""
    path = version_dir / RECORD_FILENAME
    temporary = version_dir / f".{RECORD_FILENAME}.tmp"
    temporary.write_text(json.dumps({"format": RECORD_FORMAT, **record}, indent=2, sort_keys=True) + "\n")
    temporary.replace(path)
    return path


def record_passed(version_dir: Path) -> bool:
    """Whether the version's record says it passed (cheap: the model file's hash is not checked here)."""
    try:
        record = json.loads((version_dir / RECORD_FILENAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(record, dict) and record.get("format") == RECORD_FORMAT and record.get("passed") is True


def check_record(model: str, version: int, model_path: Path) -> None:
    """Raise ModelLoadError unless a passing record for these exact model bytes sits beside them."""
    path = model_path.parent / RECORD_FILENAME
    hint = (
        f"run `ortserve validate <repository>/{model} --version {version} --data <held-out.npz>` first "
        "(the server requires a passing validation: require_validation)"
    )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"version {version} is not validated: no {path.name} beside {model_path.name}; {hint}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"version {version}: cannot read its validation record {path}: {exc}; {hint}") from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        raise ModelLoadError(f"version {version}: {path} is not a {RECORD_FORMAT} record; {hint}")
    if record.get("passed") is not True:
        failures = record.get("failures") or ["no reason recorded"]
        raise ModelLoadError(
            f"version {version} failed its validation ({path.name}): " + "; ".join(str(f) for f in failures)
        )
    if record.get("model_sha256") != file_sha256(model_path):
        raise ModelLoadError(
            f"version {version}: its validation record was written for other bytes than {model_path.name} "
            f"(SHA-256 differs); {hint}"
        )
