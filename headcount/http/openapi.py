"""The API described as an OpenAPI 3.1 document (a plain dict, served as ``/openapi.json``),
built from the route tables (:class:`headcount.http.api.Routes`): their models give the
schemas, parameters and bodies, so the document cannot drift from what is validated.

Every answer object lists all its properties as required and allows no others, so a test can
hold real responses to this document.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pydantic.json_schema import models_json_schema

from headcount.domain.timefmt import SUPPORTED_RANGE
from headcount.http.api import Model, Operation, Query, Routes
from headcount.http.limits import Limits
from headcount.http.models import Error

Schema = dict[str, Any]

_LIMITS = Limits()
_REF = "#/components/schemas/{model}"

_ERRORS = {
    "400": (
        "The request cannot be read: on any path, a request line or a header that is too long"
        f" or not HTTP, more than {_LIMITS.headers} headers or more than"
        f" {_LIMITS.query_params} query parameters; on the counts, a `ts` that is not ISO-8601"
        f" with an offset or is outside {SUPPORTED_RANGE}. `detail` says what was expected."
    ),
    "401": (
        "The service needs a token (it was started with `--tokens`) and the request carries"
        " none, or one it does not know: send `Authorization: Bearer TOKEN`. `detail` says"
        " which; the `WWW-Authenticate: Bearer` header is set."
    ),
    "403": (
        "The token's scope does not allow the request: a `read` token may GET, a `write`"
        " token may do anything. `detail` names the token and the scope needed."
    ),
    "404": 'No such resource: `{"detail": "Not found."}`.',
    "413": "The request body is larger than this server reads. `detail` gives the limit.",
    "500": "The server failed; the error is logged, not shown.",
    "503": (
        "Still recovering from the store, or (for a count at `ts`) the store is unavailable;"
        " try again shortly (`Retry-After`). `detail` says which."
    ),
}


#: Path parameters' descriptions; any other ``{name_id}`` is "The name's id."
_PATH_PARAMS = {"dpu_id": "The DPU's id."}


def build(tables: Iterable[Routes]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the routes in ``tables``."""
    operations = [op for table in tables for op in table.operations]
    schemas = _schemas(operations)
    paths: dict[str, Schema] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "headcount",
            "version": _version(),
            "description": (
                "Exact people counts for every space, now and at any past moment. Every error"
                ' is JSON `{"detail": "..."}`; times are ISO-8601 UTC with milliseconds.'
                " With tokens on, every path but `/healthz` needs `Authorization: Bearer"
                " TOKEN`: scope `read` for GET, `write` for every other method."
            ),
        },
        "paths": paths,
        # Needed only when the service runs with --tokens; /healthz never needs it.
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "A token made with `headcount tokens add NAME --scope read|write`, for a"
                        " service started with `--tokens FILE`. Without `--tokens` the API"
                        " needs none (and listens on loopback only)."
                    ),
                }
            },
            "schemas": schemas,
            "responses": {
                status: {
                    "description": description,
                    "content": {"application/json": {"schema": _ref("Error")}},
                }
                for status, description in _ERRORS.items()
            },
        },
    }


def document() -> dict[str, Any]:
    """The document of every route :func:`headcount.http.routes.add_routes` registers."""
    return copy.deepcopy(_document())


@functools.cache
def _document() -> dict[str, Any]:
    from headcount.http.routes import TABLES  # routes serves this module's document

    return build(TABLES)


def _ref(name: str) -> Schema:
    return {"$ref": _REF.format(model=name)}


def _schemas(operations: list[Operation]) -> dict[str, Schema]:
    """Every model's schema (serialization for answers, validation for bodies), by class name,
    with pydantic's ``anyOf [x, null]`` written as ``type: [x, "null"]``."""
    models: set[tuple[type[Model], Any]] = {(Error, "serialization")}
    for op in operations:
        if op.answer is not None:
            models.add((op.answer, "serialization"))
        if op.body is not None:
            models.add((op.body, "validation"))
    ordered = sorted(models, key=lambda pair: (pair[0].__name__, pair[1]))
    _, top = models_json_schema(ordered, ref_template=_REF)
    defs: dict[str, Schema] = top.get("$defs", {})
    return {name: _tidy(schema, defs) for name, schema in defs.items()}


def _tidy(schema: Any, defs: dict[str, Schema]) -> Any:
    """pydantic's schema in this document's style: no titles or defaults, nullable as a type
    list (a nullable model inlined: a ``$ref`` cannot say null), an object's properties all
    required."""
    if isinstance(schema, list):
        return [_tidy(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    node = {k: v for k, v in schema.items() if k not in ("title", "default")}
    if isinstance(node.get("description"), str):  # a docstring's line breaks are not news
        node["description"] = " ".join(node["description"].split())
    arms = node.get("anyOf")
    if isinstance(arms, list) and len(arms) == 2 and {"type": "null"} in arms:
        [arm] = [a for a in arms if a != {"type": "null"}]
        if "$ref" in arm:
            arm = defs[arm["$ref"].rsplit("/", 1)[1]]
        del node["anyOf"]
        node = {**_tidy(arm, defs), **node}
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["properties"] = {k: _tidy(v, defs) for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _tidy(node[key], defs)
    return node


def _operation(op: Operation, schemas: dict[str, Schema]) -> Schema:
    parameters = [_path_param(name) for name in re.findall(r"\{(\w+)\}", op.path)]
    if op.query is not None:
        parameters += _query_params(op.query)
    operation: Schema = {"summary": op.summary, "parameters": parameters}
    if op.public:
        operation["security"] = []
    if op.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body.__name__)}},
        }
    ok: Schema = {"description": op.description}
    if op.websocket:  # a 101 has no body
        pass
    elif op.answer is not None:
        ok["content"] = {op.content_type: {"schema": _ref(op.answer.__name__)}}
    elif op.content_type == "application/json":
        ok["content"] = {op.content_type: {"schema": {"type": "object"}}}
    else:
        ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
    responses: Schema = {str(op.status): ok}
    # Any path may answer 400 (a request aiohttp cannot read, see headcount.http.server), 500;
    # any but the open ones 401 when the service needs tokens; any but GET needs `write` (403),
    # and a body may be too large (413).
    needs: tuple[str, ...] = () if op.public else ("401",)
    if op.method != "get":
        needs += ("403",)
    if op.body is not None:
        needs += ("413",)
    for status in ("400", *needs, *(str(e) for e in op.errors), "500"):
        responses[status] = {"$ref": f"#/components/responses/{status}"}
    operation["responses"] = dict(sorted(responses.items()))
    return operation


def _path_param(name: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": _PATH_PARAMS.get(name, f"The {name.removesuffix('_id')}'s id."),
        "schema": {"type": "string"},
    }


def _query_params(query: type[Query]) -> list[Schema]:
    schema = query.model_json_schema(mode="validation", ref_template=_REF)
    params = []
    for name, field in query.model_fields.items():
        key = field.alias or name
        prop = _tidy(schema["properties"][key], schema.get("$defs", {}))
        if isinstance(prop.get("type"), list):  # absent is its null
            prop["type"] = next(t for t in prop["type"] if t != "null")
        prop = {k: v for k, v in prop.items() if k not in ("description", "x-one")}
        param: Schema = {"name": key, "in": "query", "required": field.is_required()}
        if field.description:
            param["description"] = field.description
        params.append({**param, "schema": prop})
    return params


def _version() -> str:
    try:
        return version("headcount")
    except PackageNotFoundError:
        return "0+unknown"
