"""The service's OpenAPI document, made to say what the service answers: FastAPI's document, plus POST /recommend
(which FastAPI does not route) and each route's refusals, which a fuzzer (tests/test_contract.py) holds it to."""
from __future__ import annotations

from typing import Callable

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.schemas import RECOMMEND_REQUEST, Problem, RecommendResponse
from serving.telemetry import CONTENT_TYPE


def openapi_document(app: FastAPI, recommend_path: str) -> Callable[[], dict]:
    """FastAPI's OpenAPI document, plus POST /recommend (served by serving.fast_route, outside FastAPI's routing),
    and every route's refusals."""
    def openapi() -> dict:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            ref = "#/components/schemas/{model}"
            body = RECOMMEND_REQUEST.json_schema(ref_template=ref)
            answer = RecommendResponse.model_json_schema(ref_template=ref)
            schemas.update({**body.pop("$defs", {}), **answer.pop("$defs", {}), "RecommendRequest": body,
                            "RecommendResponse": answer})
            document["paths"][recommend_path] = {"post": {
                "summary": "Rank candidates for a user; the impression is logged before the answer",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": ref.format(model="RecommendRequest")}}}},
                "responses": {"200": {"description": "The served list", "content": {"application/json": {
                    "schema": {"$ref": ref.format(model="RecommendResponse")}}}},
                    "422": {"description": "Validation error", "content": {"application/json": {
                        "schema": {"$ref": ref.format(model="HTTPValidationError")}}}}}}}
            _declare_refusals(document, ref)
            app.openapi_schema = document
        return app.openapi_schema
    return openapi


# What each route refuses besides a body that fails validation, each answered as a Problem ({"detail": "..."}); a
# 422 is then either kind. Declared so that the OpenAPI document says what the service answers (a fuzzer checks it).
REFUSALS = {
    ("/recommend", "post"): {400: "the client disconnected before sending the whole body",
                             422: "too many or duplicate candidates", 503: "the log store is unavailable"},
    ("/feedback", "post"): {400: "a body that is not JSON",
                            403: "an impression id this service did not issue, or another user's impression",
                            404: "an unknown impression",
                            422: "nothing to record, an item the impression did not show, an event before its "
                                 "impression or past the feedback window",
                            503: "the log store is unavailable"},
    ("/admin/reload", "post"): {401: "no or a wrong admin token", 403: "admin routes are disabled"},
    ("/admin/rollback", "post"): {400: "a body that is not JSON", 401: "no or a wrong admin token",
                                  403: "admin routes are disabled",
                                  409: "nothing to roll back to, an unknown version, or the version is served"},
}


def _declare_refusals(document: dict, ref: str) -> None:
    """Add REFUSALS to `document`, and /metrics as the Prometheus text it is."""
    document["components"]["schemas"]["Problem"] = Problem.model_json_schema(ref_template=ref)
    problem = {"$ref": ref.format(model="Problem")}
    for (path, method), refusals in REFUSALS.items():
        responses = document["paths"][path][method]["responses"]
        for status, why in refusals.items():
            schema = problem
            if status == 422:
                schema = {"anyOf": [{"$ref": ref.format(model="HTTPValidationError")}, problem]}
            responses[str(status)] = {"description": why, "content": {"application/json": {"schema": schema}}}
    document["paths"]["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus text exposition", "content": {CONTENT_TYPE.split(";")[0]: {
            "schema": {"type": "string"}}}}
