"""A client of a running service's HTTP API: its live counts, for ``headcount replay
--verify --service`` (a :class:`headcount.history.live_check.ServiceCounts`), and resets, for
``headcount reset --service``."""

from __future__ import annotations

import re
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit

import aiohttp

from headcount.errors import HeadcountError

#: What a bearer token may hold: visible ASCII (the tokens headcount makes are URL-safe).
_TOKEN = re.compile(r"[\x21-\x7e]+")


class ServiceError(HeadcountError):
    """The service could not be asked: a bad URL, unreachable, or it answered with an error."""


class ServiceClient:
    """``async with ServiceClient(url) as service``: the API of the service at ``url``, e.g.
    ``http://127.0.0.1:8080``, asked with ``token`` when the service needs one (sent as
    ``Authorization: Bearer``, never logged nor shown in an error). Every failure is a
    :class:`ServiceError` naming the URL; a service that does not answer within
    ``timeout_s`` is one too."""

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        if token is not None and not _TOKEN.fullmatch(token):
            raise ServiceError(  # the token itself is not shown: it may be a real one, mistyped
                "the token has characters an API token cannot have (spaces, control characters,"
                " non-ASCII); check --token or HEADCOUNT_TOKEN"
            )
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServiceError(f"{url!r} is not a service URL: give http://HOST:PORT")
        self._base = url.rstrip("/") + "/"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        try:
            self._session = aiohttp.ClientSession(
                base_url=self._base,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers=self._headers,
            )
        except ValueError as e:  # e.g. a port that is not a number
            raise ServiceError(f"{self.url!r} is not a service URL: {e}") from None
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def counts(self) -> dict[str, int]:
        """``GET /spaces``: every space's live count, by space id."""
        body = await self._get("spaces", "its live counts")
        return {space["id"]: space["count"] for space in body["spaces"]}

    async def count(self, space_id: str) -> int:
        """``GET /spaces/{space_id}/count``: one space's live count."""
        path = f"spaces/{quote(space_id, safe='')}/count"
        body = await self._get(path, f"the live count of space {space_id!r}")
        return int(body["count"])

    async def reset(self, space_id: str, count: int, ts: str | None = None) -> Any:
        """``POST /spaces/{space_id}/resets``: set the space's count at ``ts`` (ISO-8601;
        the service's now when ``None``). Returns the service's answer (``space_id``, ``ts``,
        ``count``, ``kind``); a refusal is a :class:`ServiceError` with the service's reason."""
        path = f"spaces/{quote(space_id, safe='')}/resets"
        body: dict[str, Any] = {"count": count} if ts is None else {"count": count, "ts": ts}
        return await self._ask("POST", path, f"a reset of space {space_id!r}", body)

    async def _get(self, path: str, what: str) -> Any:
        return await self._ask("GET", path, what)

    async def _ask(self, method: str, path: str, what: str, body: Any = None) -> Any:
        if self._session is None:
            raise RuntimeError("use ServiceClient in 'async with'")
        try:
            async with self._session.request(method, path, json=body) as response:
                if response.status in (401, 403):
                    raise ServiceError(await self._refused(response, what))
                if response.status in (400, 404, 409):
                    detail = await self._detail(response)
                    raise ServiceError(
                        f"the service at {self.url} refused {what} ({response.status}: {detail})"
                    )
                response.raise_for_status()
                return await response.json()
        except aiohttp.ClientError as e:
            raise ServiceError(f"cannot ask the service at {self.url} for {what}: {e}") from e
        except TimeoutError as e:
            raise ServiceError(
                f"the service at {self.url} did not answer for {what} within"
                f" {self.timeout_s:g} s; is it overloaded, or is that the right URL?"
            ) from e

    @staticmethod
    async def _detail(response: aiohttp.ClientResponse) -> str:
        """The service's reason for an error answer, in its own words."""
        try:
            return str((await response.json())["detail"])
        except (aiohttp.ClientError, ValueError, KeyError, TypeError):
            return response.reason or str(response.status)

    async def _refused(self, response: aiohttp.ClientResponse, what: str) -> str:
        """Why the service refused the token (or its absence), in its own words."""
        detail = await self._detail(response)
        given = "the token given" if self._headers else "no token"
        return (
            f"the service at {self.url} refused {what} with {given} ({response.status}:"
            f" {detail}); give a token with --token or HEADCOUNT_TOKEN"
        )
