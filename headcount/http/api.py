"""One description of each route: the pydantic models that validate its parameters and body
and shape its answer, registered with the handler in a :class:`Routes` table, from which
:mod:`headcount.http.openapi` builds the document. A feature keeps its routes in its own
module, ``routes = Routes()``, and :func:`headcount.http.routes.add_routes` adds the table.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic
from aiohttp import web
from pydantic_core import ErrorDetails

from headcount.http.errors import JSON, Handler, error


class Model(pydantic.BaseModel):
    """The base of every answer and body: no field it does not declare, immutable, and every
    field listed as required in the document (an answer always carries it, null or not)."""

    model_config = pydantic.ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )


class Query(pydantic.BaseModel):
    """The base of a route's query parameters. A ``list[...]`` field takes a repeated parameter
    (``?space_id=A&space_id=B``); any other field takes one. A field's description documents
    the parameter. Parameters it does not declare are ignored."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=Model)
Q = TypeVar("Q", bound=Query)
Decorator = Callable[[Handler], Handler]


@dataclass(frozen=True)
class Operation:
    """What the document says of one method on one path."""

    method: str
    path: str
    summary: str
    query: type[Query] | None
    body: type[Model] | None
    answer: type[Model] | None
    status: int
    errors: tuple[int, ...]
    content_type: str
    #: The 2xx answer's description.
    description: str
    #: Open without a token (``security: []``).
    public: bool
    websocket: bool = False


class Routes:
    """Like aiohttp's ``RouteTableDef``, plus what the document says of each route."""

    def __init__(self) -> None:
        self._defs: list[web.RouteDef] = []
        self._operations: list[Operation] = []

    @property
    def defs(self) -> list[web.RouteDef]:
        """The aiohttp route definitions, for ``app.add_routes``."""
        return list(self._defs)

    @property
    def operations(self) -> list[Operation]:
        return list(self._operations)

    def get(
        self,
        path: str,
        *,
        summary: str,
        query: type[Query] | None = None,
        answer: type[Model] | None,
        errors: Iterable[int] = (),
        content_type: str = JSON,
        description: str = "OK.",
        public: bool = False,
    ) -> Decorator:
        """A GET route answering ``answer`` (``None``: a body the document describes only by
        ``content_type``). ``public``: open without a token."""
        operation = Operation(
            "get", path, summary, query, None, answer, 200, tuple(errors), content_type,
            description, public,
        )  # fmt: skip
        return self._add(operation)

    def post(
        self,
        path: str,
        *,
        summary: str,
        body: type[Model] | None = None,
        query: type[Query] | None = None,
        answer: type[Model] | None,
        status: int = 200,
        errors: Iterable[int] = (),
        description: str = "OK.",
    ) -> Decorator:
        """A POST route taking ``body`` (JSON) and answering ``answer`` with ``status``."""
        operation = Operation(
            "post", path, summary, query, body, answer, status, tuple(errors), JSON,
            description, False,
        )  # fmt: skip
        return self._add(operation)

    def websocket(self, path: str, *, summary: str, query: type[Query] | None = None) -> Decorator:
        """A WebSocket route: a GET the handler upgrades (101)."""
        operation = Operation(
            "get", path, summary, query, None, None, 101, (), JSON,
            "Switching to the WebSocket protocol.", False, websocket=True,
        )  # fmt: skip
        return self._add(operation)

    def _add(self, operation: Operation) -> Decorator:
        def register(handler: Handler) -> Handler:
            if operation.method == "get" and not operation.websocket:
                route = web.get(operation.path, handler)  # and HEAD, as aiohttp's own get
            else:
                route = web.route(operation.method.upper(), operation.path, handler)
            self._defs.append(route)
            self._operations.append(operation)
            return handler

        return register


def parse_query(request: web.Request, model: type[Q]) -> Q:
    """The request's query parameters as ``model``; 400 naming the parameter otherwise."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        given = request.query.getall(key, [])
        if not given:
            continue
        if _is_list(field.annotation):
            values[key] = given
        elif len(given) > 1:
            raise error(web.HTTPBadRequest, f"{key}: give one {_one(field)}, not {len(given)}")
        else:
            values[key] = given[0]
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as e:
        raise error(web.HTTPBadRequest, _detail(e)) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The request's JSON body as ``model``; 400 naming the field otherwise."""
    try:
        return model.model_validate_json(await request.read())
    except pydantic.ValidationError as e:
        raise error(web.HTTPBadRequest, _detail(e)) from None


def answer(value: Model, *, status: int = 200) -> web.Response:
    """``value`` as the JSON answer."""
    return web.Response(text=value.model_dump_json(), status=status, content_type=JSON)


def _is_list(annotation: Any) -> bool:
    for kind in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(kind) in (list, tuple, set, frozenset):
            return True
    return False


def _one(field: pydantic.fields.FieldInfo) -> str:
    """What one value of the parameter is called ("timestamp"), from ``x-one`` in its
    ``json_schema_extra``; "value" without it."""
    extra = field.json_schema_extra
    noun = extra.get("x-one") if isinstance(extra, Mapping) else None
    return noun if isinstance(noun, str) else "value"


def _detail(e: pydantic.ValidationError) -> str:
    """The first problem as ``name: what would be right (got ...)``: no pydantic wording that
    points at pydantic (its URLs, its type names)."""
    first = e.errors(include_url=False)[0]
    return f"{_where(first)}: {_what(first)}"


def _where(problem: ErrorDetails) -> str:
    loc = ".".join(str(part) for part in problem["loc"])
    return loc or "body"


def _what(problem: ErrorDetails) -> str:
    kind, given, ctx = problem["type"], problem.get("input"), problem.get("ctx", {})
    if kind == "value_error":  # our own validators' messages, whole
        return str(ctx.get("error", problem["msg"]))
    if kind == "json_invalid":
        return f"not JSON ({ctx.get('error', problem['msg'])})"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "not a field here"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", "")).replace(" or ", ", ").replace("'", "")
        return f"must be one of {expected} (got {_shown(given)})"
    message = problem["msg"].removeprefix("Input should be ").removeprefix("input should be ")
    if message != problem["msg"]:
        message = f"must be {message}"
    else:
        message = message[:1].lower() + message[1:]
    return f"{message} (got {_shown(given)})" if not isinstance(given, dict | list) else message


def _shown(given: object, limit: int = 40) -> str:
    """``given`` as it is quoted back in a detail: cut short, a body may be large."""
    text = repr(given)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
