"""The HTTP API (aiohttp): routes and their JSON shapes, errors, the OpenAPI document. The
handlers read the service's parts from typed application keys (``http.keys``)."""

from headcount.http.routes import add_routes
from headcount.http.server import make_runner

__all__ = ["add_routes", "make_runner"]
