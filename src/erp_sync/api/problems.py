"""The API's error answers as its OpenAPI document declares them.

Every error is ``{"detail": "<one sentence>"}``; a 422 adds ``errors`` (and a domain
error its ``field``). FastAPI's generated document declares its own 422 shape (a list of
pydantic errors), which our handler does not send, and none of the 400 (unparsable
body), 401 (bearer token) and 503 (PostgreSQL or Redis down) answers every ``/api/``
operation can give: clients generated from the document, and schemathesis
(tests/reliability/test_api_fuzz.py), hold the API to what it declares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An error: what went wrong in one sentence; for invalid input, the fields at fault."""

    detail: str
    field: str | None = None
    errors: list[FieldProblem] | None = None


def _ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


COMMON = {
    "401": "missing, wrong, revoked or expired bearer token",
    "503": "PostgreSQL, Redis or the queue is unavailable; the detail says which",
}


def openapi_with_problems(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        defs = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(defs.pop("$defs", {}))
        schemas["Problem"] = defs
        # FastAPI's 422 points here: make it the shape _validation_error sends.
        schemas["HTTPValidationError"] = {"$ref": "#/components/schemas/Problem"}
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/api/"):
                continue
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                answers = dict(COMMON)
                if "requestBody" in operation:
                    answers["400"] = "the body is not valid JSON"
                for code, description in answers.items():
                    responses.setdefault(
                        code, {"description": description, "content": _ref("Problem")}
                    )
                # The routes' own 4xx (404 unknown tenant, 403 operator only, 409...)
                # are problems too.
                for code, response in responses.items():
                    if str(code).startswith("4") and "content" not in response:
                        response["content"] = _ref("Problem")
        app.openapi_schema = schema
        return schema

    return build
