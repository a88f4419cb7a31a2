"""What the protocol tests share: the credentials their suite accepts, and the suite."""

from __future__ import annotations

import openai

from aion.gateway import keys
from aion.infra import devstack

USER_KEY, VIEWER_KEY, OTHER_KEY = "k-user-e2e", "k-viewer-e2e", "k-other-tenant-e2e"
JWT_SECRET = "e2e-jwt-secret-that-is-32-bytes-long"
JWT_AUDIENCE, JWT_ISSUER = "aion-e2e", "https://issuer.e2e.test"
# The gateway is configured with the keys' hashes, never the keys.
API_KEYS = [
    {"hash": keys.hash_key(USER_KEY), "tenant": "default", "roles": ["user"], "name": "e2e-user"},
    {"hash": keys.hash_key(VIEWER_KEY), "tenant": "default", "roles": ["viewer"]},
    {"hash": keys.hash_key(OTHER_KEY), "tenant": "other", "roles": ["user"]},
]


class HttpSuite:
    """A running suite whose gateway serves HTTP on ``base_url``."""

    def __init__(self, suite: devstack.LocalSuite, http_port: int, dsn: str) -> None:
        self.suite = suite
        self.base_url = f"http://127.0.0.1:{http_port}"
        self.dsn = dsn  # the gateway's database: its API keys and rate-limit buckets
        self._clients: list[openai.OpenAI] = []

    def client(self, key: str = USER_KEY, **kw: object) -> openai.OpenAI:
        """The openai client, authenticated with ``key``; closed with the suite (a client
        collected with its connection open is an unclosed-socket warning, an error here)."""
        self._clients.append(
            openai.OpenAI(
                base_url=self.base_url + "/v1",
                api_key=key,
                max_retries=0,
                timeout=120,
                **kw,  # type: ignore[arg-type]
            )
        )
        return self._clients[-1]

    def close(self) -> None:
        """Close the clients made here."""
        while self._clients:
            self._clients.pop().close()
