"""WatchedFile: a configuration file parsed at start and again whenever it changes on disk.

Change is told by the file's (inode, size, mtime) signature, checked at most once per
`min_interval_s`, so that a rotated key file or JWKS takes effect without a restart and the
request path pays one clock read between checks. A file that stops parsing keeps the last
good value (and is reported once per new signature): a half-written file never locks everyone out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from typing import Generic, TypeVar

log = logging.getLogger("ortserve.security")

T = TypeVar("T")

Signature = tuple[int, int, int]


class SecurityConfigError(ValueError):
    """A security setting or file is invalid; the message names the setting or file and why."""


def file_signature(path: Path) -> Signature | None:
    """(inode, size, mtime_ns) of a file, or None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class WatchedFile(Generic[T]):
    """The parsed content of a file, re-read when the file changes (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        parse: Callable[[bytes], T],
        *,
        what: str,
        min_interval_s: float = 1.0,
        clock: Callable[[], float] = monotonic,
    ) -> None:
        self.path = Path(path)
        self._parse = parse
        self._what = what
        self._interval = min_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._signature = file_signature(self.path)
        try:
            self._value = parse(self.path.read_bytes())
        except OSError as exc:
            raise SecurityConfigError(f"{what} {self.path}: cannot read it ({exc.strerror})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise SecurityConfigError(f"{what} {self.path}: {exc}") from None
        self._checked = clock()

    def value(self) -> T:
        """The current parsed content (re-read first if the file changed since the last check)."""
        now = self._clock()
        if now - self._checked >= self._interval:
            self._checked = now
            self._reload_if_changed()
        return self._value

    def _reload_if_changed(self) -> None:
        signature = file_signature(self.path)
        if signature is None or signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:
                return
            self._signature = signature
            try:
                self._value = self._parse(self.path.read_bytes())
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Never the content: it may hold secrets.
                log.warning("%s %s changed but is invalid (%s); keeping the previous one",
                            self._what, self.path, type(exc).__name__)
                return
            log.info("%s %s reloaded", self._what, self.path)
