"""Bearer tokens on the API: the middleware that lets a request in, or answers 401 or 403.

With :data:`AUTH` set on the application, every route but the open ones (``/healthz``, and
``/metrics`` when the service is told to leave it open for Prometheus) needs
``Authorization: Bearer TOKEN`` with a token of the tokens file (:mod:`headcount.http.tokens`).
What a request needs goes by its method, so routes added later are covered as they come: GET
and HEAD need ``read``; every other method (POST and the admin actions) needs ``write``. A path
that matches no route is refused the same way, so an unauthenticated client learns nothing of
which paths exist; a client with a token is told 404 or 405. Without :data:`AUTH` every
request is let in (the service then listens on loopback only, unless told otherwise: see
``headcount.service.preflight``).

The token is never logged: refusals are logged at DEBUG with the token's name when it has
one, and aiohttp's access log does not print the ``Authorization`` header.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from aiohttp import web

from headcount.http.errors import JSON, Handler
from headcount.http.tokens import Scope, Token, Tokens

__all__ = ["AUTH", "OPEN_ALWAYS", "Auth", "needed_scope", "require_token"]

log = logging.getLogger(__name__)

#: Paths any client may ask without a token: liveness probes carry none.
OPEN_ALWAYS = frozenset({"/healthz"})
_READ_METHODS = frozenset({"GET", "HEAD"})
_HOW = "send 'Authorization: Bearer TOKEN' (a token is made with 'headcount tokens add')"


@dataclass(frozen=True, slots=True)
class Auth:
    """The tokens the API accepts and the routes (by path template) open without one."""

    tokens: Tokens
    open_paths: frozenset[str] = OPEN_ALWAYS

    def summary(self) -> str:
        """For the log: how many tokens, which paths are open (never a token nor a hash)."""
        return f"{len(self.tokens.tokens)} (open: {', '.join(sorted(self.open_paths))})"


AUTH = web.AppKey("auth", Auth)


def needed_scope(method: str) -> Scope:
    """The scope a request with ``method`` needs: read for GET and HEAD, write otherwise."""
    return Scope.READ if method in _READ_METHODS else Scope.WRITE


@web.middleware
async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Let the request in if the application needs no token, the route is open, or it carries
    a token whose scope allows its method; else answer 401 or 403 (JSON, with
    ``WWW-Authenticate: Bearer``)."""
    auth = request.app.get(AUTH)
    if auth is None or _route(request) in auth.open_paths:
        return await handler(request)
    presented = _bearer(request)
    if presented is None:
        raise _refusal(
            web.HTTPUnauthorized,
            f"This API needs a token: {_HOW}.",
            'Bearer realm="headcount"',
        )
    token = auth.tokens.find(presented)
    if token is None:
        log.debug("refused %s %s: a token this service does not know", request.method, request.path)
        raise _refusal(
            web.HTTPUnauthorized,
            "The bearer token is not one this service knows: check it, or make a new one with"
            " 'headcount tokens add' and restart the service.",
            'Bearer realm="headcount", error="invalid_token"',
        )
    if request.match_info.http_exception is None:  # a route matched: its method's scope
        _check_scope(request, token)
    # else 404 or 405: told to a client with a token, whatever its scope
    return await handler(request)


def _check_scope(request: web.Request, token: Token) -> None:
    needed = needed_scope(request.method)
    if token.scope.allows(needed):
        return
    log.debug(
        "refused %s %s to token %r: scope %s", request.method, request.path, token.name, token.scope
    )
    raise _refusal(
        web.HTTPForbidden,
        f"Token {token.name!r} has scope {token.scope}; {request.method} needs a token with"
        f" scope {needed}.",
        f'Bearer realm="headcount", error="insufficient_scope", scope="{needed}"',
    )


def _route(request: web.Request) -> str | None:
    """The path template of the route the request matched (``None``: none matched)."""
    resource = request.match_info.route.resource
    return None if resource is None else resource.canonical


def _bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme in any case)."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _refusal(kind: type[web.HTTPException], detail: str, challenge: str) -> web.HTTPException:
    return kind(
        text=json.dumps({"detail": detail}),
        content_type=JSON,
        headers={"WWW-Authenticate": challenge},
    )
