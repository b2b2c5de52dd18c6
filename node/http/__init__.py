"""The node's HTTP server: the scoring API now, the labeling app, ingestion API and dashboard later.

Public API: `create_app`, `run_server`, `ServerConfig`, `ScorerRegistry`, and for new features
`Feature`, `Endpoint`, `Schema`, `Role`, `Authenticator`, the `HttpError` family and
`read_json_object`. See app.py for how the pieces fit.
"""

from node.http.app import create_app, run_server, serve
from node.http.auth import ApiToken, Authenticator, BearerTokenAuthenticator, Principal, Role, hash_token
from node.http.config import ServerConfig
from node.http.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    HttpError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
    error_body,
)
from node.http.routes import PRINCIPAL_KEY, Endpoint, Feature, Schema, json_response, read_json_object
from node.http.scoring import Scorer, ScorerRegistry

__all__ = [
    "ApiToken", "Authenticator", "BadRequest", "BearerTokenAuthenticator", "Conflict", "Endpoint", "Feature", "Forbidden",
    "HttpError", "NotFound", "PRINCIPAL_KEY", "PayloadTooLarge", "Principal", "Role", "Schema", "Scorer",
    "ScorerRegistry", "ServerConfig", "ServiceUnavailable", "Unauthorized", "UnsupportedMediaType",
    "ValidationError", "create_app", "error_body", "hash_token", "json_response", "read_json_object",
    "run_server", "serve",
]
