"""What a model is on disk: fingerprints of its directories, and files uploaded with a load request.

Fingerprints are (relative path, size, mtime in ns, inode) of every file, read with `stat` only,
never the contents, so that polling a repository of large models stays cheap. A file replaced by
a rename (the safe way to publish a model) gets a new inode, a file rewritten in place a new mtime.
All of this is blocking: callers run it in a worker thread.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ortserve.errors import InvalidInputError
from ortserve.repository.validation import RECORD_FILENAME

Fingerprint = tuple[tuple[str, int, int, int], ...]


def tree_fingerprint(directory: Path, *, skip: frozenset[str] = frozenset()) -> Fingerprint:
    """Every file under `directory` (hidden ones included), sorted; `skip`: top-level names left out.

    A missing or unreadable directory gives an empty fingerprint.
    """
    found: list[tuple[str, int, int, int]] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        top = root == str(directory)
        for name in files:
            if top and name in skip:
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # removed while we looked: the next scan sees the change
            found.append((os.path.relpath(path, directory), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(sorted(found))


def version_fingerprint(version_dir: Path) -> Fingerprint:
    """What a loaded version depends on: its directory's files, except the validation record."""
    return tree_fingerprint(version_dir, skip=frozenset({RECORD_FILENAME}))


def model_fingerprint(model_dir: Path) -> Fingerprint:
    """Everything of a model directory (config, versions, validation records), for the poller."""
    return tree_fingerprint(model_dir)


def check_upload_path(key: str) -> PurePosixPath:
    """A load request's `file:<path>` key as a safe relative path inside the model directory."""
    relative = PurePosixPath(key)
    parts = relative.parts
    if (
        not key
        or "\\" in key
        or "\0" in key
        or relative.is_absolute()
        or any(part in ("", ".", "..") or part.startswith(".") for part in parts)
        or len(parts) < 2
        or not (parts[0].isascii() and parts[0].isdigit() and not parts[0].startswith("0"))
    ):
        raise InvalidInputError(
            f"load parameter 'file:{key}': expected 'file:<version>/<path>', e.g. 'file:1/model.onnx', "
            "a relative path under a positive version number without '..' or hidden names"
        )
    return relative


def stage_upload(name: str, files: Mapping[str, bytes]) -> Path:
    """Write uploaded files as `<tmp>/<name>/<path>`; returns `<tmp>` (the caller removes it).

    The files replace the repository's model directory for this load, as in Triton; the
    config comes with the request, so none is written.
    """
    staging = Path(tempfile.mkdtemp(prefix="ortserve-upload-"))
    try:
        model_dir = staging / name
        model_dir.mkdir()
        for key, content in files.items():
            target = model_dir / check_upload_path(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging
