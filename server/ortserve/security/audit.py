"""The audit log of control-plane actions: who did what, when, and how it ended.

One JSON object per line, on the `ortserve.audit` logger (always at INFO, whatever the
server's log level) and, when a file is configured, appended to it; the file is opened per
entry, so that log rotation needs no signal. Entries never hold credentials.

    {"time": "2025-01-01T12:00:00.123456+00:00", "who": "jwt:alice", "peer": "ipv4:10.0.0.7:51234",
     "action": "load", "model": "resnet", "parameters": ["config"], "result": "OK", "message": "",
     "duration_ms": 812.4}
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("ortserve.audit")
log.setLevel(logging.INFO)


@dataclass(slots=True)
class AuditEntry:
    who: str
    peer: str
    action: str
    model: str
    result: str
    """OK, or the status the action ended with (UNAVAILABLE, NOT_FOUND, PERMISSION_DENIED ...)."""
    message: str = ""
    parameters: list[str] = field(default_factory=list)
    """The names of the parameters given (not their values)."""
    duration_ms: float = 0.0
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class AuditLog:
    """Writes AuditEntry records as JSON lines (see the module docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()

    def record(self, entry: AuditEntry) -> None:
        line = json.dumps(asdict(entry), ensure_ascii=False)
        log.info("%s", line)
        if self.path is not None:
            try:
                with self._lock, self.path.open("a", encoding="utf-8") as f:
                    f.write(line + "\n")
            except OSError as exc:
                log.error("cannot append to the audit log %s: %s", self.path, exc.strerror)
