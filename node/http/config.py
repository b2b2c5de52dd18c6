"""The HTTP server's settings: where it listens, who may call it, how much one request may ask."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from node.http.auth import ApiToken


@dataclass(frozen=True)
class ServerConfig:
    """Settings of `rewardnode serve` (the `[server]` table of node.toml)."""

    host: str = "127.0.0.1"
    """Interface to listen on. The default serves this machine only; "0.0.0.0" serves the network."""
    port: int = 8080
    """TCP port; 0 picks a free one (the URL printed at start says which)."""
    tokens: tuple[ApiToken, ...] = ()
    """Accepted bearer tokens, as sha256 hashes with a role each; tokens are never stored or logged."""
    require_auth: bool = True
    """When False every caller is an anonymous admin: only for a node on localhost used by one person."""
    max_body_bytes: int = 1 << 20
    """Largest request body; larger ones get 413."""
    max_items: int = 256
    """Most (prompt, response) items in one /v1/score request; more get 422."""
    max_compare_responses: int = 32
    """Most responses in one /v1/compare request (its answer has n(n-1)/2 preferences); more get 422."""
    max_text_chars: int = 20_000
    """Longest prompt or response, in characters; longer ones get 422 (the model truncates to
    max_length tokens anyway)."""
    batch_window_ms: float = 5.0
    """How long the micro-batcher waits for more concurrent requests before scoring."""
    max_batch: int = 64
    """Items that make the micro-batcher score at once without waiting out the window."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server port {self.port} is not in 0..65535; pick a free port such as 8080")
        for name in ("max_body_bytes", "max_items", "max_text_chars", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"server {name} is {getattr(self, name)}; it must be at least 1")
        if self.max_compare_responses < 2:
            raise ValueError(f"server max_compare_responses is {self.max_compare_responses}; a comparison needs at "
                             "least 2 responses")
        if self.batch_window_ms < 0:
            raise ValueError(f"server batch_window_ms is {self.batch_window_ms}; use 0 (no waiting) or more")
        object.__setattr__(self, "tokens", tuple(self.tokens))

    @property
    def batch_window_s(self) -> float:
        """The batch window in seconds."""
        return self.batch_window_ms / 1000.0

    @property
    def is_loopback(self) -> bool:
        """True when only this machine can reach the server."""
        return self.host in ("127.0.0.1", "::1", "localhost")

    @classmethod
    def from_toml(cls, table: Mapping[str, Any]) -> ServerConfig:
        """The config from node.toml's `[server]` table; tokens as `[[server.tokens]]` {sha256, role, name}.

        >>> ServerConfig.from_toml({"port": 9000, "require_auth": False}).port
        9000
        """
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise ValueError(f"unknown key {key!r} in [server]; known keys: {', '.join(known)}")
            if key == "tokens":
                values[key] = tuple(_token_from_toml(i, t) for i, t in enumerate(value))
                continue
            default = known[key].default
            ok = isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise ValueError(f"[server] {key} = {value!r} must be a {type(default).__name__}")
            values[key] = value
        return cls(**values)


def _token_from_toml(index: int, entry: Any) -> ApiToken:
    if not isinstance(entry, Mapping) or "sha256" not in entry or set(entry) - {"sha256", "role", "name"}:
        raise ValueError(f"[[server.tokens]] entry {index} must have sha256 and optionally role and name; got "
                         f"keys {sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__}")
    try:
        return ApiToken(**entry)
    except ValueError as e:  # a bad role: list the good ones
        raise ValueError(f"[[server.tokens]] entry {index}: {e}; roles: admin, scorer, labeler") from None
