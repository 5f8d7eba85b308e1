"""How the HTTP API is served: the runner the service starts its site with."""

from __future__ import annotations

from aiohttp import web

__all__ = ["make_runner"]


def make_runner(app: web.Application) -> web.AppRunner:
    """A runner for ``app``: signals are the service's to handle, and no access log (a line
    per request would cost more than the answer)."""
    return web.AppRunner(app, handle_signals=False, access_log=None)
