"""The API's tokens file: who may read, who may write, stored as hashes only.

The file is TOML, one ``[[token]]`` table per token::

    [[token]]
    name = "grafana"      # letters, digits, '.', '_', '-'; unique; shown in logs, never the token
    scope = "read"        # "read": GET and HEAD; "write": every method
    sha256 = "9f86d0..."  # hex SHA-256 of the token's UTF-8 bytes

``headcount tokens add NAME --scope read`` makes a token, prints it once and appends its table
(:func:`add_token`). A token is 32 random bytes, URL-safe base64, after the prefix ``hc_`` so
that secret scanners and people can tell what it is.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headcount.errors import ConfigError

__all__ = ["Scope", "Token", "Tokens", "add_token", "digest", "new_token"]

PREFIX = "hc_"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HEX = re.compile(r"[0-9a-f]{64}")
_KEYS = {"name", "scope", "sha256"}
_SCOPES = {"read", "write"}


class Scope(enum.StrEnum):
    """What a token may do: ``read`` (GET, HEAD) or ``write`` (every method; includes read)."""

    READ = "read"
    WRITE = "write"

    def allows(self, needed: Scope) -> bool:
        return self is Scope.WRITE or needed is Scope.READ


@dataclass(frozen=True, slots=True)
class Token:
    """One token of the file: its name, scope and the SHA-256 of its text (never the text)."""

    name: str
    scope: Scope
    sha256: bytes


def digest(token: str) -> bytes:
    """The SHA-256 of a token as presented (its UTF-8 bytes; undecodable bytes kept as sent)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def new_token() -> str:
    """A new random token."""
    return PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens a service accepts."""

    tokens: tuple[Token, ...]

    def find(self, presented: str) -> Token | None:
        """The token whose hash is ``presented``'s, or ``None``. Every stored hash is compared
        in constant time, and all of them always are: the time taken tells nothing of which
        token, if any, matched."""
        wanted = digest(presented)
        found = None
        for token in self.tokens:
            if hmac.compare_digest(token.sha256, wanted):
                found = token
        return found

    @classmethod
    def load(cls, path: Path) -> Tokens:
        """Read and check a tokens file; every problem in it is reported at once as a
        :class:`ConfigError` naming the file and the token."""
        tokens = _read(path)
        if not tokens:
            raise ConfigError(
                f"tokens file {path} holds no token, so no request could be let in; add one with"
                f" 'headcount tokens add NAME --scope read --file {path}'"
            )
        return cls(tokens)


def _read(path: Path) -> tuple[Token, ...]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read the tokens file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"tokens file {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"tokens file {path} is not valid TOML: {e}") from None
    tokens, problems = _parse(data)
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"tokens file {path} cannot be used:\n{listed}")
    return tokens


def _parse(data: dict[str, Any]) -> tuple[tuple[Token, ...], list[str]]:
    """The tokens of a parsed file, and every problem found in it."""
    problems = [f"unknown key {key!r}: the file holds [[token]] tables" for key in data]
    problems = [p for p in problems if not p.startswith("unknown key 'token'")]
    tables = data.get("token", [])
    if not isinstance(tables, list):
        problems.append("'token' must be [[token]] tables, one per token")
        tables = []
    tokens: list[Token] = []
    for number, table in enumerate(tables, start=1):
        token = _token(f"token {number}", table, problems)
        if token is not None:
            tokens.append(token)
    names = [t.name for t in tokens]
    problems += [
        f"token {n!r}: the name is used twice" for n in sorted(set(names)) if names.count(n) > 1
    ]
    hashes = [t.sha256 for t in tokens]
    if len(set(hashes)) < len(hashes):
        problems.append("two tokens have the same sha256: one token under two names")
    return tuple(tokens), problems


def _token(where: str, table: object, problems: list[str]) -> Token | None:
    """The token of one table, or ``None`` with its problems added to ``problems``."""
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a [[token]] table")
        return None
    found = [f"{where}: unknown key {key!r}" for key in sorted(set(table) - _KEYS)]
    found += [f"{where}: missing {key!r}" for key in sorted(_KEYS - set(table))]
    name, scope, sha = table.get("name"), table.get("scope"), table.get("sha256")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        if name is not None:
            found.append(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-'")
        name = None
    else:
        where = f"token {name!r}"
    if scope not in _SCOPES:
        if scope is not None:
            found.append(f"{where}: scope must be 'read' or 'write', not {scope!r}")
        scope = None
    if not isinstance(sha, str) or not _HEX.fullmatch(sha):
        if sha is not None:
            found.append(f"{where}: sha256 must be 64 lowercase hex digits")
        sha = None
    problems += found
    if found or name is None or scope is None or sha is None:
        return None
    return Token(name, Scope(scope), bytes.fromhex(sha))


def add_token(path: Path, name: str, scope: Scope) -> str:
    """Make a new token named ``name`` with ``scope``, append its hash to the tokens file at
    ``path`` (created readable by its owner alone) and return the token: the only time it is
    seen. Refuses a bad name, a name the file has already, or a file that cannot be used."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it names the"
            " token in logs)"
        )
    existing = _read(path) if path.exists() else ()
    if any(t.name == name for t in existing):
        raise ConfigError(f"tokens file {path} has a token named {name!r} already; pick another")
    token = new_token()
    entry = (
        f'[[token]]\nname = "{name}"\nscope = "{scope.value}"\nsha256 = "{digest(token).hex()}"\n'
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            out.write(("\n" if out.tell() else "") + entry)
    except OSError as e:
        raise ConfigError(f"cannot write the tokens file {path}: {e.strerror or e}") from None
    return token
