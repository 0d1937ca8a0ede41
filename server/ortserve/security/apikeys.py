"""Static API keys, stored as SHA-256 hashes in a TOML file; never the keys themselves.

    [[key]]
    id = "ci-bot"                        # who: shown in the audit log and used for rate limits
    sha256 = "5e88489...c3b6e"           # hex SHA-256 of the key
    scopes = ["inference", "metadata"]   # out of inference, metadata, model_control

Keys are random and long (`new_key` makes 256-bit ones), so a plain SHA-256 suffices: unlike
passwords they cannot be guessed, and a hash lookup costs the request path ~1 µs.

    python -m ortserve.security.apikeys --id ci-bot --scopes inference,metadata

prints a new key (give it to the client) and its entry for the file.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass

from ortserve.security.principal import Principal, Scope, parse_scopes

KEY_PREFIX = "osk_"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    sha256: str
    scopes: frozenset[Scope]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def parse_keys(data: bytes) -> dict[str, Principal]:
    """The keys file -> {sha256 hex: principal}; raises ValueError naming the bad entry."""
    doc = tomllib.loads(data.decode())
    entries = doc.get("key", [])
    if not isinstance(entries, list):
        raise ValueError("expected [[key]] tables")
    by_hash: dict[str, Principal] = {}
    ids: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"key #{index + 1}"
        key_id, digest = entry.get("id"), entry.get("sha256")
        if not isinstance(key_id, str) or not key_id:
            raise ValueError(f"{where}: needs a non-empty id")
        where = f"key {key_id!r}"
        if key_id in ids:
            raise ValueError(f"{where}: the id appears twice")
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"{where}: sha256 must be 64 hex digits (the SHA-256 of the key, never the key)")
        ids.add(key_id)
        by_hash[digest.lower()] = Principal(f"key:{key_id}", parse_scopes(entry.get("scopes"), where=where))
    return by_hash


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ortserve.security.apikeys", description="Make a new API key.")
    parser.add_argument("--id", required=True, help="the key's id (who it belongs to)")
    parser.add_argument("--scopes", default="inference,metadata", help="comma-separated: " + ", ".join(Scope))
    args = parser.parse_args(argv)
    scopes = [s for s in args.scopes.split(",") if s]
    try:
        parse_scopes(scopes, where="--scopes")
    except ValueError as exc:
        parser.error(str(exc))
    key = new_key()
    print(f"key (give it to the client; it is not stored anywhere): {key}", file=sys.stderr)
    print(f'[[key]]\nid = "{args.id}"\nsha256 = "{hash_key(key)}"\nscopes = {scopes!r}'.replace("'", '"'))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
