"""Who is calling, and may they call this route: roles, API tokens, pluggable authenticators.

Each route declares the one `Role` it needs (or `None`: public). An `Authenticator` turns a request
into a `Principal` (or None when its kind of credential is absent); the app tries its authenticators
in order. The built-in one reads `Authorization: Bearer <token>` and compares sha256(token) with the
configured hashes in constant time; tokens themselves are never stored, logged or echoed.
A later feature (the labeling app) adds its own, e.g. a session-cookie authenticator for labelers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from aiohttp import web

from node.http.errors import Forbidden, Unauthorized

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class Role(StrEnum):
    """What a principal may do. ADMIN may do everything; the others only their own routes."""

    ADMIN = "admin"
    """Runs the node: every route."""
    SCORER = "scorer"
    """An LLM backend or evaluation job: the scoring API only (least privilege for machine tokens)."""
    LABELER = "labeler"
    """A person labeling preference pairs (the labeling web app, a later feature)."""


def hash_token(token: str) -> str:
    """Hex sha256 of an API token: what the server config stores instead of the token.

    >>> hash_token("secret")[:16]
    '2bb80d537b1da3e3'
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """One accepted bearer token, stored as its sha256."""

    sha256: str
    """Lowercase hex sha256 of the token (`hash_token(token)`); the token itself is never stored."""
    role: Role = Role.ADMIN
    """What the token may do."""
    name: str = "admin"
    """Who holds it, for logs and audit (never the token)."""

    def __post_init__(self) -> None:
        if not _SHA256_RE.match(self.sha256):
            raise ValueError(f"API token {self.name!r}: sha256 must be 64 lowercase hex characters; store "
                             "hash_token(token), never the token itself")
        object.__setattr__(self, "role", Role(self.role))

    @classmethod
    def from_secret(cls, token: str, role: Role = Role.ADMIN, name: str = "admin") -> ApiToken:
        """The entry for a plain token (hashes it; keep the token only on the client side)."""
        if len(token) < 16:
            raise ValueError(f"API token {name!r} is {len(token)} characters; use at least 16 random characters "
                             "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return cls(hash_token(token), Role(role), name)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    name: str
    role: Role

    def may(self, required: Role) -> bool:
        """True when this principal may use a route that needs `required`."""
        return self.role is Role.ADMIN or self.role is required


ANONYMOUS_ADMIN = Principal("anonymous", Role.ADMIN)
"""Every caller when `require_auth` is off (a node on localhost for one person)."""


class Authenticator(Protocol):
    """Turns a request into a Principal; None when the request carries no credential of its kind.

    Raise `Unauthorized` for a credential of its kind that is wrong (bad token, expired session).
    """

    async def authenticate(self, request: web.Request) -> Principal | None: ...


class BearerTokenAuthenticator:
    """`Authorization: Bearer <token>` checked against sha256 hashes with hmac.compare_digest."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = tuple((bytes.fromhex(t.sha256), t) for t in tokens)

    async def authenticate(self, request: web.Request) -> Principal | None:
        header = request.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'", invalid_token=True)
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        match: ApiToken | None = None
        for expected, entry in self._tokens:  # check every entry: the time taken does not say which matched
            if hmac.compare_digest(digest, expected) and match is None:
                match = entry
        if match is None:
            raise Unauthorized("the bearer token is not valid for this node; check the token, or ask the node's "
                               "admin for one", invalid_token=True)
        return Principal(match.name, match.role)


async def authorize(
    request: web.Request, required: Role, authenticators: Sequence[Authenticator], *, require_auth: bool
) -> Principal:
    """The request's principal, if it may use a route that needs `required`; else 401/403."""
    if not require_auth:
        return ANONYMOUS_ADMIN
    principal: Principal | None = None
    for authenticator in authenticators:
        principal = await authenticator.authenticate(request)
        if principal is not None:
            break
    if principal is None:
        raise Unauthorized(f"{request.method} {request.path} needs authentication; send 'Authorization: Bearer "
                           "<token>' with a token from the node's admin")
    if not principal.may(required):
        roles = f"{required.value!r}" if required is Role.ADMIN else f"{required.value!r} or 'admin'"
        raise Forbidden(f"{principal.name!r} has role {principal.role.value!r}; {request.method} {request.path} "
                        f"needs role {roles}")
    return principal
