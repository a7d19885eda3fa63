"""Credentials for protected-mode tests: JWTs signed with a test secret, API-key files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt

from cachewire.hub.auth.verifiers import hash_key

SECRET = "test-secret-of-at-least-32-bytes!!"


def token(
    grants: dict[str, Any] | None = None,
    *,
    expires_in: float = 300.0,
    aud: str | None = "cachewire",
    secret: str = SECRET,
    **claims: Any,
) -> str:
    """An HS256 JWT with the `cachewire` grants claim; `expires_in` may be a fraction."""
    payload: dict[str, Any] = {"sub": "tester", "exp": time.time() + expires_in, **claims}
    if aud is not None:
        payload["aud"] = aud
    if grants is not None:
        payload["cachewire"] = grants
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def write_api_keys(path: Path, keys: dict[str, dict[str, Any]]) -> Path:
    """keys: the key itself → {"name": ..., "publish": [...], ...}; the file holds hashes."""
    lines = []
    for key, entry in keys.items():
        lines.append(f"[keys.{hash_key(key)}]")
        for field, value in entry.items():
            lines.append(f"{field} = {json.dumps(value)}")  # JSON scalars and lists are TOML
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)  # atomically, as a Secret update does: a new inode
    return path
