"""The API described as an OpenAPI 3.1 document (a plain dict, served as ``/openapi.json``).

Every response object lists all its properties as required (but a series bucket's
`utilization`, given only where the space has a capacity) and allows no others, so a test can
hold real responses to this document.
"""

from __future__ import annotations

import copy
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from headcount.domain.timefmt import SUPPORTED_RANGE
from headcount.http.limits import Limits

Schema = dict[str, Any]

_LIMITS = Limits()
_TS_EXAMPLE = "2018-02-27T00:00:00.000Z"


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(description: str, **properties: Schema) -> Schema:
    return {
        "type": "object",
        "description": description,
        "required": list(properties),
        "properties": properties,
        "additionalProperties": False,
    }


def _of(kind: str, description: str, nullable: bool = False, **extra: Any) -> Schema:
    return {"type": [kind, "null"] if nullable else kind, "description": description, **extra}


def _timestamp(description: str, nullable: bool = False) -> Schema:
    return _of("string", description, nullable, format="date-time", examples=[_TS_EXAMPLE])


def _list(item: str) -> Schema:
    return {"type": "array", "items": _ref(item)}


_SPACE_ID = _of("string", "The space's id in the topology.", examples=["A"])
_COUNT = _of("integer", "People in the space (below zero only if it allows negatives).")
_ENTRANCES = _of("integer", "Traversals into the space, ever (a reset does not clear them).")
_EXITS = _of("integer", "Traversals out of the space, ever (a reset does not clear them).")
_PARENT = _of("string", "The id of the enclosing space.", nullable=True)
_CAPACITY = _of("integer", "How many people the space is meant to hold.", nullable=True)

_COUNT_FIELDS: dict[str, Schema] = {
    "space_id": _SPACE_ID,
    "ts": _timestamp("The moment (UTC, milliseconds)."),
    "count": _COUNT,
}
_DPU_FIELDS: dict[str, Schema] = {
    "id": _of("string", "The DPU's id.", examples=["283"]),
    "doorway": _of("string", "The doorway it serves now.", nullable=True),
    "online": _of("boolean", "Its last status message; null: never heard.", nullable=True),
    "last_seen": _timestamp("When its last traversal message arrived.", nullable=True),
    "last_seq": _of("integer", "The highest seq it reported.", nullable=True),
    "delivery": {
        **_obj(
            "The DPU's last delivery report (its status map) against the store; null: no"
            " report yet, or firmware that sends none. `missing` above 0 means traversals the"
            " broker acknowledged to the DPU never reached the store, or were refused into"
            " quarantine.",
            first=_of("integer", "The seq its count starts at; null when sent is 0.", True),
            seq=_of("integer", "The highest seq it counted; null when sent is 0.", True),
            sent=_of("integer", "Distinct traversals with seq in [first, seq] it sent."),
            stored=_of("integer", "How many of those are in the store."),
            missing=_of("integer", "sent - stored (never below 0)."),
            reported_at=_timestamp("When its report was compared with the store."),
        ),
        "type": ["object", "null"],
    },
}

SCHEMAS: dict[str, Schema] = {
    "Error": _obj("Every error.", detail=_of("string", "What went wrong, for a person.")),
    "Count": _obj("A space's count at a moment.", **_COUNT_FIELDS),
    "CountDetail": _obj(
        "A space's count at a moment, with the entrances and exits behind it.",
        **_COUNT_FIELDS,
        entrances=_ENTRANCES,
        exits=_EXITS,
    ),
    "SpaceSummary": _obj(
        "A space and its live count.",
        id=_SPACE_ID,
        name=_of("string", "The space's name."),
        parent=_PARENT,
        capacity=_CAPACITY,
        count=_COUNT,
    ),
    "SpaceList": _obj("Every space of the topology.", spaces=_list("SpaceSummary")),
    "SpaceDoorway": _obj(
        "A doorway that links the space.",
        id=_of("string", "The doorway's id."),
        name=_of("string", "The doorway's name."),
        sensor_placement=_of(
            "integer", "+1: the DPU hangs inside this space; -1: outside it.", enum=[1, -1]
        ),
        dpus=_of("array", "The DPUs assigned to the doorway now.", items={"type": "string"}),
    ),
    "Space": _obj(
        "A space's settings, its doorways and its live counts.",
        id=_SPACE_ID,
        name=_of("string", "The space's name."),
        parent=_PARENT,
        children=_of("array", "Ids of the spaces inside it.", items={"type": "string"}),
        time_zone=_of("string", "IANA time zone of its daily reset.", examples=["Europe/Paris"]),
        daily_reset=_of(
            "string", "Local time of the daily reset to zero.", nullable=True, examples=["04:00"]
        ),
        capacity=_CAPACITY,
        allow_negative=_of("boolean", "Whether the count may go below zero."),
        doorways=_list("SpaceDoorway"),
        count=_COUNT,
        entrances=_ENTRANCES,
        exits=_EXITS,
    ),
    "Dpu": _obj("A DPU: where it is now and what was last heard from it.", **_DPU_FIELDS),
    "DpuList": _obj("Every DPU the topology knows.", dpus=_list("Dpu")),
    "Assignment": _obj(
        "A period in which the DPU served a doorway: [valid_from, valid_until).",
        doorway=_of("string", "The doorway's id."),
        valid_from=_timestamp("Start (inclusive)."),
        valid_until=_timestamp("End (exclusive); null: still in force.", nullable=True),
    ),
    "DpuDetail": _obj(
        "A DPU with every assignment it had.", **_DPU_FIELDS, assignments=_list("Assignment")
    ),
    "Bucket": {
        **_obj(
            "One bucket [start, end) of local wall-clock time; `utilization` only where the"
            " space has a capacity.",
            start=_of("string", "Start (inclusive), local time with its offset."),
            end=_of("string", "End (exclusive), local time with its offset."),
            count=_of("integer", "The count after the bucket's last event (`?ts=` at end - 1 ms)."),
            min=_of("integer", "The lowest count in the bucket (its start and after each event)."),
            max=_of("integer", "The highest count in the bucket (its start and after each event)."),
            entrances=_of("integer", "Traversals in the bucket whose delta for the space is +1."),
            exits=_of("integer", "Traversals in the bucket whose delta for the space is -1."),
            events=_of("integer", "Traversals, manual resets and daily resets in the bucket."),
            utilization=_of("number", "max / capacity."),
        ),
        "required": ["start", "end", "count", "min", "max", "entrances", "exits", "events"],
    },
    "Series": _obj(
        "A space's counts in buckets, one page.",
        space_id=_SPACE_ID,
        time_zone=_of("string", "The zone whose clock the buckets follow."),
        interval=_of(
            "string", "The buckets' interval.", enum=["1m", "5m", "15m", "1h", "1d", "1w"]
        ),
        results=_list("Bucket"),
        next=_of("string", "The path and query of the next page; null on the last.", True),
    ),
    "SeriesList": _obj("Several spaces' counts in buckets.", spaces=_list("Series")),
    "Health": _obj(
        "The service is serving.",
        status=_of("string", "Always ok.", enum=["ok"]),
        spaces=_of("integer", "Spaces this process serves."),
        actor_restarts=_of("integer", "Space actors restarted after a crash since start."),
    ),
}

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
    "500": "The server failed; the error is logged, not shown.",
    "503": (
        "Still recovering from the store, or (for a count at `ts`) the store is unavailable;"
        " try again shortly (`Retry-After`). `detail` says which."
    ),
}


def _query(name: str, description: str, required: bool = False, **schema: Any) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "string"},
    }


_SERIES_PARAMS: tuple[Schema, ...] = (
    _query(
        "start_time",
        "ISO-8601 with an offset (send `+` as `%2B`); the first bucket is the one holding it.",
        True,
        type="string",
        format="date-time",
    ),
    _query(
        "end_time",
        "ISO-8601 with an offset, after start_time; the last bucket holds end_time - 1 ms.",
        True,
        type="string",
        format="date-time",
    ),
    _query(
        "interval",
        "Bucket length on the local clock (1h by default): a DST day has 23 or 25 hours; 1d is"
        " midnight to midnight local, 1w Monday 00:00 local to the next.",
        type="string",
        enum=["1m", "5m", "15m", "1h", "1d", "1w"],
    ),
    _query("time_zone", "A tz database name; by default the space's own.", type="string"),
    _query(
        "page_size",
        "Buckets per space in one answer (default 1,000).",
        type="integer",
        minimum=1,
        maximum=10_000,
    ),
)

_TS_PARAM: Schema = {
    "name": "ts",
    "in": "query",
    "required": False,
    "description": (
        "The moment to answer for, ISO-8601 with a UTC offset (`Z` or `+01:00`; a `+` must be"
        f" sent as `%2B`), from {SUPPORTED_RANGE} (UTC). Without it: now, from the live state."
    ),
    "schema": {"type": "string", "format": "date-time", "examples": [_TS_EXAMPLE]},
}


def _response(status: str) -> Schema:
    return {"$ref": f"#/components/responses/{status}"}


def _path_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _get(
    summary: str,
    schema: str | None,
    *,
    parameters: tuple[Schema, ...] = (),
    errors: tuple[str, ...] = (),
    open_: bool = False,
) -> Schema:
    if schema is None:
        content = {"text/plain": {"schema": {"type": "string"}}}
        ok = "The Prometheus text format (version 0.0.4)."
    else:
        content = {"application/json": {"schema": _ref(schema)}}
        ok = "OK."
    responses: Schema = {"200": {"description": ok, "content": content}}
    # Any path may answer 400 (a request aiohttp cannot read, see headcount.http.server), 500;
    # any but the open ones 401 when the service needs tokens (GETs need only `read`: no 403).
    for status in ("400", *(() if open_ else ("401",)), *errors, "500"):
        responses[status] = _response(status)
    operation: Schema = {"summary": summary, "parameters": list(parameters)}
    if open_:
        operation["security"] = []
    return {"get": {**operation, "responses": responses}}


_SPACE = _path_param("space_id", "The space's id.")
_DPU = _path_param("dpu_id", "The DPU's id.")

PATHS: dict[str, Schema] = {
    "/space/{space_id}/count": _get(
        "A space's count, now or at `ts` (the seed service's endpoint).",
        "Count",
        parameters=(_SPACE, _TS_PARAM),
        errors=("404", "503"),
    ),
    "/spaces": _get("Every space with its live count.", "SpaceList", errors=("503",)),
    "/spaces/{space_id}": _get(
        "A space's settings, doorways and live counts.",
        "Space",
        parameters=(_SPACE,),
        errors=("404", "503"),
    ),
    "/spaces/{space_id}/count": _get(
        "A space's count with its entrances and exits, now or at `ts`.",
        "CountDetail",
        parameters=(_SPACE, _TS_PARAM),
        errors=("404", "503"),
    ),
    "/spaces/{space_id}/counts": _get(
        "A space's counts in buckets of local wall-clock time, a page at a time.",
        "Series",
        parameters=(_SPACE, *_SERIES_PARAMS),
        errors=("404", "503"),
    ),
    "/counts": _get(
        "Several spaces' counts in buckets; each space's `next` continues it on its own route.",
        "SeriesList",
        parameters=(
            _query(
                "space_id",
                "A space's id; repeat for more (space_id=A&space_id=B).",
                True,
                type="array",
                items={"type": "string"},
            ),
            *_SERIES_PARAMS,
        ),
        errors=("404", "503"),
    ),
    "/dpus": _get("Every DPU the topology knows.", "DpuList"),
    "/dpus/{dpu_id}": _get(
        "A DPU with its assignment history.", "DpuDetail", parameters=(_DPU,), errors=("404",)
    ),
    "/healthz": _get(
        "Whether every space is being served and ingest keeps up; 503 says why not (spaces"
        " still recovering, or messages waiting for a commit that does not come).",
        "Health",
        errors=("503",),
        open_=True,
    ),
    "/metrics": _get(
        "Prometheus metrics (without a token when the service runs with `--open-metrics`).",
        None,
    ),
    "/openapi.json": {
        "get": {
            "summary": "This document.",
            "responses": {
                "200": {
                    "description": "OpenAPI 3.1.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "400": _response("400"),
                "401": _response("401"),
                "500": _response("500"),
            },
        }
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API."""
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
        "paths": copy.deepcopy(PATHS),
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
            "schemas": copy.deepcopy(SCHEMAS),
            "responses": {
                status: {
                    "description": description,
                    "content": {"application/json": {"schema": _ref("Error")}},
                }
                for status, description in _ERRORS.items()
            },
        },
    }


def _version() -> str:
    try:
        return version("headcount")
    except PackageNotFoundError:
        return "0+unknown"
