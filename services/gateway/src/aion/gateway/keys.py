"""API keys: their format, their hash, and where they are kept.

A key reads ``aion_<id>_<secret>``: ``id`` (12 hex characters) is public and
finds the key's one row; ``secret`` is verified against a scrypt hash
(``hashlib.scrypt``, RFC 7914), so neither the database nor the configuration
holds a usable key. Keys created by ``aionctl keys create`` live in Postgres
(``gateway_api_keys``); bootstrap keys are configured by their hash in
``AION_GATEWAY_API_KEYS``. A configured key may have any shape (an older key,
or one an OpenAI client sends): its lookup id is then derived from it.

``python -m aion.gateway.keys hash [KEY]`` prints the hash to configure
(a new key when none is given, printed on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import datetime
import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Sequence

from aion.core import errors, ttl_cache
from aion.gateway import db

ROLES = ("viewer", "user", "admin")
_FORMAT = re.compile(r"^aion_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})$")
# scrypt cost: 16 MiB and about 50 ms a verification; verified keys are cached.
_N, _R, _P = 2**14, 8, 1
_MAX_KEY_CHARS = 512


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    """A key as stored, without its secret."""

    id: str
    tenant: str
    name: str
    roles: tuple[str, ...]
    created_at: datetime.datetime | None = None
    last_used_at: datetime.datetime | None = None
    revoked_at: datetime.datetime | None = None


def lookup_id(presented: str) -> str:
    """The id a presented key is looked up by."""
    match = _FORMAT.match(presented)
    if match:
        return match.group(1)
    return "h" + hashlib.sha256(presented.encode()).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _derive(key: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def hash_key(key: str) -> str:
    """``scrypt$<lookup id>$<n>$<r>$<p>$<salt>$<digest>`` for ``key``."""
    salt = secrets.token_bytes(16)
    digest = _derive(key, salt, _N, _R, _P)
    return f"scrypt${lookup_id(key)}${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def hash_id(hashed: str) -> str:
    """The lookup id a hash was made for; ValueError when it is not one of ours."""
    parts = hashed.split("$")
    if len(parts) != 7 or parts[0] != "scrypt":
        raise ValueError(
            "not an API key hash: expected 'scrypt$<id>$<n>$<r>$<p>$<salt>$<digest>'"
            " (make one with `python -m aion.gateway.keys hash`)"
        )
    return parts[1]


def verify(key: str, hashed: str) -> bool:
    """Whether ``key`` is the key ``hashed`` was made from (constant time in the digest)."""
    try:
        _, _, n, r, p, salt, digest = hashed.split("$")
        derived = _derive(key, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(derived, _unb64(digest))


def new_key() -> tuple[str, str]:
    """A new key ``aion_<id>_<secret>`` and its id."""
    key_id = secrets.token_hex(6)
    return f"aion_{key_id}_{secrets.token_urlsafe(32)}", key_id


def check_roles(roles: Sequence[str]) -> tuple[str, ...]:
    """``roles``, known and at least one, or InvalidArgument."""
    if not roles:
        raise errors.InvalidArgument(
            "a key needs at least one role (viewer, user or admin)", field="roles"
        )
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise errors.InvalidArgument(
            f"unknown roles {unknown}: use viewer, user or admin", field="roles"
        )
    return tuple(sorted(set(roles), key=ROLES.index))


class KeyStore:
    """Keys in Postgres, scoped to a tenant; ``find`` verifies a presented key."""

    def __init__(self, pool: db.Pool) -> None:
        self._pool = pool

    async def find(self, presented: str) -> KeyRecord | None:
        """The live key ``presented`` is, or None (unknown, wrong secret, or revoked)."""
        if len(presented) > _MAX_KEY_CHARS:
            return None
        key_id = lookup_id(presented)
        with db.reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT id, tenant, name, roles, hash FROM gateway_api_keys "
                    "WHERE id = %s AND revoked_at IS NULL",
                    (key_id,),
                )
                row = await cur.fetchone()
        if row is None or not await asyncio.to_thread(verify, presented, row["hash"]):
            return None
        with db.reachable():
            async with self._pool.connection() as conn:
                await conn.execute(
                    "UPDATE gateway_api_keys SET last_used_at = now() WHERE id = %s AND "
                    "(last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
                    (key_id,),
                )
        return KeyRecord(row["id"], row["tenant"], row["name"], tuple(row["roles"]))

    async def create(
        self, *, tenant: str, name: str, roles: Sequence[str]
    ) -> tuple[KeyRecord, str]:
        """A new key of ``tenant``: its record and the whole key (shown once)."""
        if len(name) > 128:
            raise errors.InvalidArgument("a key's name is at most 128 characters", field="name")
        checked = check_roles(roles)
        key, key_id = new_key()
        hashed = await asyncio.to_thread(hash_key, key)
        with db.reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "INSERT INTO gateway_api_keys (id, tenant, name, roles, hash) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING *",
                    (key_id, tenant, name, list(checked), hashed),
                )
                row = await cur.fetchone()
        assert row is not None
        return _record(row), key

    async def list(self, *, tenant: str, include_revoked: bool = False) -> list[KeyRecord]:
        """``tenant``'s keys, oldest first."""
        with db.reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT * FROM gateway_api_keys WHERE tenant = %s AND "
                    "(%s OR revoked_at IS NULL) ORDER BY created_at, id",
                    (tenant, include_revoked),
                )
                return [_record(row) for row in await cur.fetchall()]

    async def revoke(self, *, tenant: str, key_id: str) -> KeyRecord:
        """Revoke ``tenant``'s key ``key_id`` (NotFound for another tenant's)."""
        with db.reachable():
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    "UPDATE gateway_api_keys SET revoked_at = coalesce(revoked_at, now()) "
                    "WHERE id = %s AND tenant = %s RETURNING *",
                    (key_id, tenant),
                )
                row = await cur.fetchone()
        if row is None:
            raise errors.NotFound(f"no API key '{key_id}' in this tenant", field="id")
        return _record(row)


def _record(row: dict[str, object]) -> KeyRecord:
    roles = row["roles"]
    assert isinstance(roles, list)
    return KeyRecord(
        id=str(row["id"]),
        tenant=str(row["tenant"]),
        name=str(row["name"]),
        roles=tuple(str(r) for r in roles),
        created_at=row["created_at"],  # type: ignore[arg-type]
        last_used_at=row["last_used_at"],  # type: ignore[arg-type]
        revoked_at=row["revoked_at"],  # type: ignore[arg-type]
    )


class VerifiedCache:
    """Keys verified recently (by a digest of the key, never the key), for ``ttl_s``."""

    def __init__(self, ttl_s: float, *, max_entries: int = 10_000) -> None:
        self._entries: ttl_cache.TtlCache[bytes, KeyRecord] = ttl_cache.TtlCache(
            ttl_s, max_entries=max_entries
        )

    @staticmethod
    def _digest(presented: str) -> bytes:
        return hashlib.sha256(presented.encode()).digest()

    def get(self, presented: str) -> KeyRecord | None:
        """The cached record of ``presented``, if verified within the TTL."""
        return self._entries.get(self._digest(presented))

    def put(self, presented: str, record: KeyRecord) -> None:
        """Remember ``presented`` as ``record`` for the TTL."""
        self._entries.put(self._digest(presented), record)

    def forget(self, key_id: str) -> None:
        """Drop every entry of ``key_id`` (it was revoked here)."""
        self._entries.forget(lambda _, record: record.id == key_id)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m aion.gateway.keys hash [KEY]``."""
    parser = argparse.ArgumentParser(prog="python -m aion.gateway.keys")
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser(
        "hash",
        help="print the hash of KEY (of a new key when none is "
        "given: the key goes to stderr) for AION_GATEWAY_API_KEYS",
    )
    cmd.add_argument("key", nargs="?", help="the key; '-' reads it from stdin")
    args = parser.parse_args(argv)
    key = args.key
    if key == "-":
        key = sys.stdin.readline().strip()
    if not key:
        key, _ = new_key()
        print(key, file=sys.stderr)
    print(hash_key(key))


if __name__ == "__main__":
    main()
