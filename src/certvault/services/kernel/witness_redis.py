"""The audit witness in Redis, for several nodes (DESIGN.md §8).

Every node must see the same witness, and the database's credentials must not be able to write
it. Run this Redis apart from the database, with ``appendonly yes`` and ``appendfsync always`` so
that an acknowledged witness survives a Redis restart. Each value only moves forward: the
comparison and the write are one Lua script, atomic on the server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from certvault.services.kernel.witness import ChainHead

_PREFIX = "certvault:witness:"

# KEYS[1] the value's key; ARGV[1] its new ordinal, ARGV[2] the JSON to keep. Forward only.
_ADVANCE = """
local current = redis.call('HGET', KEYS[1], 'n')
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'n', ARGV[1], 'v', ARGV[2])
return 1
"""


class RedisWitness:
    """The same witness as the file store, kept in Redis under ``certvault:witness:``."""

    def __init__(self, url: str, prefix: str = _PREFIX) -> None:
        self._redis: Any = redis.Redis.from_url(url, socket_timeout=5)
        self._prefix = prefix
        self._advance = self._redis.register_script(_ADVANCE)

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}{kind}:{name}"

    def ensure_directory(self) -> None:
        """Nothing to create; the file store's counterpart makes its folder."""

    def read(self, chain: str) -> ChainHead | None:
        raw = self._redis.hget(self._key("head", chain), "v")
        if raw is None:
            return None
        value = json.loads(raw)
        return ChainHead(str(value["chain"]), int(value["seq"]), str(value["mac"]))

    def advance(self, heads: Sequence[ChainHead]) -> None:
        for head in heads:
            data = json.dumps({"chain": head.chain, "seq": head.seq, "mac": head.mac})
            self._advance(keys=[self._key("head", head.chain)], args=[head.seq, data])

    def all(self) -> list[ChainHead]:
        heads = []
        for key in sorted(self._redis.scan_iter(match=self._key("head", "*"))):
            name = key.decode() if isinstance(key, bytes) else str(key)
            head = self.read(name.rsplit(":", 1)[1])
            if head is not None:
                heads.append(head)
        return heads

    def generation(self, account_uuid: str) -> int:
        raw = self._redis.hget(self._key("generation", account_uuid), "n")
        return int(raw) if raw is not None else 0

    def advance_generation(self, account_uuid: str, generation: int) -> None:
        self._advance(
            keys=[self._key("generation", account_uuid)], args=[generation, str(generation)]
        )
