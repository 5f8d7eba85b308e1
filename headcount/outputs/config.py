"""The service config file (``headcount serve --config FILE``, TOML): its webhooks.

```toml
[[webhooks]]
name = "ops"                                  # optional; labels its metrics and log lines
url = "https://hooks.example.com/headcount"   # http:// or https://
spaces = ["lobby", "hall"]                    # or "*": every space
secret = "a long random string"               # signs each body (HMAC-SHA256)
```

Every problem of the file is reported at once, each naming the entry and what would be
right, before anything opens.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from headcount.errors import ConfigError

__all__ = ["MIN_SECRET_LENGTH", "ServiceConfig", "Webhook", "load_config"]

MIN_SECRET_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_WEBHOOK_KEYS = ("name", "url", "spaces", "secret")


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where alerts are POSTed: ``spaces`` ``None`` is every space."""

    name: str
    url: str
    spaces: frozenset[str] | None
    secret: str = field(repr=False)

    def wants(self, space_id: str) -> bool:
        return self.spaces is None or space_id in self.spaces


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """What the config file holds; empty without one."""

    webhooks: tuple[Webhook, ...] = ()

    def check_spaces(self, known: Iterable[str], source: str) -> None:
        """Refuse a webhook that names a space the topology does not define."""
        spaces = set(known)
        problems = [
            f"{source}: webhook {hook.name!r}: space {space!r} is not in the topology;"
            ' use a space id of the topology, or "*"'
            for hook in self.webhooks
            for space in sorted(hook.spaces or ())
            if space not in spaces
        ]
        if problems:
            raise ConfigError("\n".join(problems))


def load_config(path: Path, flag: str = "--config") -> ServiceConfig:
    """Read and check the file; :class:`ConfigError` names ``flag`` and every problem."""
    source = f"{flag} {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(
            f"{source}: cannot read it ({e.strerror}); give a readable file"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: is not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: is not valid TOML: {e}; fix the syntax there") from None
    problems: list[str] = []
    for key in data:
        if key != "webhooks":
            problems.append(f"{source}: unknown key {key!r}; the file holds [[webhooks]] tables")
    entries = data.get("webhooks", [])
    if not isinstance(entries, list):
        problems.append(f"{source}: webhooks must be [[webhooks]] tables, one per webhook")
        entries = []
    hooks: list[Webhook] = []
    for index, entry in enumerate(entries):
        where = f"{source}: webhooks[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where}: must be a table: write it as [[webhooks]] with url = ...")
            continue
        hook = _webhook(entry, where, problems)
        if hook is not None:
            hooks.append(hook)
    names = [hook.name for hook in hooks]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"{source}: two webhooks are named {name!r}; give each its own name")
    if problems:
        raise ConfigError("\n".join(problems))
    return ServiceConfig(tuple(hooks))


def _webhook(entry: Mapping[str, Any], where: str, problems: list[str]) -> Webhook | None:
    before = len(problems)
    for key in entry:
        if key not in _WEBHOOK_KEYS:
            problems.append(f"{where}: unknown key {key!r}; allowed: {', '.join(_WEBHOOK_KEYS)}")
    url = entry.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    try:
        bad_url = parts is None or parts.scheme not in ("http", "https") or not parts.hostname
        bad_url = bad_url or (parts is not None and parts.port == 0)
    except ValueError:  # a port that is not a number
        bad_url = True
    if bad_url:
        problems.append(
            f"{where}: url {url!r} is not an http:// or https:// URL with a host;"
            ' write e.g. url = "https://hooks.example.com/headcount"'
        )
    secret = entry.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        problems.append(
            f"{where}: secret must be a string of at least {MIN_SECRET_LENGTH} characters"
            " (the receiver checks signatures with it); use a long random one, e.g. from"
            " 'python -c \"import secrets; print(secrets.token_urlsafe(32))\"'"
        )
    spaces = _spaces(entry.get("spaces"), where, problems)
    # Without a name the URL's host names it (a bad URL is reported once, above).
    name = entry.get("name", parts.hostname if parts is not None and not bad_url else None)
    if name is not None and (not isinstance(name, str) or not _NAME.fullmatch(name)):
        problems.append(
            f"{where}: name {name!r} must be 1 to 64 letters, digits, '.', '_' or '-';"
            ' write e.g. name = "ops"'
        )
    if len(problems) > before or not isinstance(url, str) or not isinstance(secret, str):
        return None
    return Webhook(str(name), url, spaces, secret)


def _spaces(value: object, where: str, problems: list[str]) -> frozenset[str] | None:
    if value == "*":
        return None
    if (
        isinstance(value, list)
        and value
        and all(isinstance(space, str) and space for space in value)
    ):
        return frozenset(value)
    problems.append(
        f'{where}: spaces {value!r} must be a non-empty list of space ids or "*" (every'
        ' space); write e.g. spaces = ["lobby"]'
    )
    return None
