"""Bearer tokens on the API: the check that lets a request in, or answers 401 or 403.

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

import hmac
import json
import logging
from dataclasses import dataclass

from aiohttp import hdrs, web

from headcount.http.errors import JSON
from headcount.http.server import remember, verified
from headcount.http.tokens import Scope, Token, Tokens

__all__ = ["AUTH", "OPEN_ALWAYS", "Auth", "check_token", "needed_scope"]

log = logging.getLogger(__name__)

#: Paths any client may ask without a token: liveness probes carry none.
OPEN_ALWAYS = frozenset({"/healthz"})
_READ_METHODS = frozenset({"GET", "HEAD"})
_WRITE = Scope.WRITE
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


def check_token(request: web.Request) -> None:
    """Return if the application needs no token, the route is open, or the request carries a
    token whose scope allows its method; else raise 401 or 403 (JSON, with
    ``WWW-Authenticate: Bearer``). Run by the API's one middleware
    (:func:`headcount.http.errors.guard`)."""
    auth = request.app.get(AUTH)
    if auth is None:
        return
    match_info = request.match_info
    resource = match_info.route.resource
    if resource is not None and resource.canonical in auth.open_paths:
        return
    presented = _bearer(request)
    if presented is None:
        raise _refusal(
            web.HTTPUnauthorized,
            f"This API needs a token: {_HOW}.",
            'Bearer realm="headcount"',
        )
    token = _token(request, auth.tokens, presented)
    if token is None:
        log.debug("refused %s %s: a token this service does not know", request.method, request.path)
        raise _refusal(
            web.HTTPUnauthorized,
            "The bearer token is not one this service knows: check it, or make a new one with"
            " 'headcount tokens add' and restart the service.",
            'Bearer realm="headcount", error="invalid_token"',
        )
    # A route that matched needs its method's scope; 404 or 405 is told to a client with a
    # token, whatever its scope.
    if (
        token.scope is _WRITE
        or request.method in _READ_METHODS
        or match_info.http_exception is not None
    ):
        return
    raise _scope_refusal(request, token)


def _token(request: web.Request, tokens: Tokens, presented: str) -> Token | None:
    """The token ``presented`` is, or ``None``. A connection of the service remembers the
    token that last matched on it; a request presenting the same bytes (compared in constant
    time) is that token without hashing it again: the hash is the check's main cost per
    request (bench/live_query.py). Tokens change only with a restart, which closes every
    connection."""
    raw = presented.encode("utf-8", "surrogateescape")
    known = verified(request)
    if known is not None and hmac.compare_digest(known[0], raw):
        return known[1]
    token = tokens.find(presented)
    if token is not None:
        remember(request, raw, token)
    return token


def _scope_refusal(request: web.Request, token: Token) -> web.HTTPException:
    needed = needed_scope(request.method)
    log.debug(
        "refused %s %s to token %r: scope %s", request.method, request.path, token.name, token.scope
    )
    return _refusal(
        web.HTTPForbidden,
        f"Token {token.name!r} has scope {token.scope}; {request.method} needs a token with"
        f" scope {needed}.",
        f'Bearer realm="headcount", error="insufficient_scope", scope="{needed}"',
    )


def _bearer(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (the scheme in any case)."""
    scheme, _, token = request.headers.get(hdrs.AUTHORIZATION, "").strip().partition(" ")
    token = token.strip()
    return token if token and scheme.lower() == "bearer" else None


def _refusal(kind: type[web.HTTPException], detail: str, challenge: str) -> web.HTTPException:
    return kind(
        text=json.dumps({"detail": detail}),
        content_type=JSON,
        headers={"WWW-Authenticate": challenge},
    )
