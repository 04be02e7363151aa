"""One POST route served as a plain ASGI app in front of FastAPI's routing (serving.app mounts /recommend on it).

The hot route skips the router, FastAPI's dependency solving, the Request object and the exception and exit-stack
middlewares, a large share of the event loop's time per request. Errors still get FastAPI's own handlers (the same
4xx bodies as any other route), and anything unexpected reaches the server-error middleware (a 500). The body is
validated straight from its bytes; serving.openapi puts the route in the OpenAPI document.
"""
from __future__ import annotations

from typing import Awaitable, Callable, TypeVar

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from serving.schemas import CLOCK_HEADER
from serving.signing import token_matches

T = TypeVar("T")
CLOCK_HEADER_KEY = CLOCK_HEADER.lower().encode("latin-1")  # as ASGI lists header names


class FastRoute:
    """POST `path` answered by `handler(body, trusted)`, the body checked against `schema`; `trusted`: the request
    holds the clock token. Every other request passes through to `app`."""

    def __init__(self, app: Callable, path: str, schema: TypeAdapter[T],
                 handler: Callable[[T, bool], Awaitable[BaseModel]], clock_token: str | None):
        self.app, self.path, self.schema, self.handler, self.clock_token = app, path, schema, handler, clock_token

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        try:
            if scope["method"] != "POST":
                raise HTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})
            clock = next((v.decode("latin-1") for k, v in scope["headers"] if k == CLOCK_HEADER_KEY), None)
            body = parse(self.schema, await _body(receive))
            answer = await self.handler(body, token_matches(self.clock_token, clock))
            response = Response(answer.model_dump_json(), media_type="application/json")
        except HTTPException as e:
            response = await http_exception_handler(Request(scope), e)
        except RequestValidationError as e:
            response = await request_validation_exception_handler(Request(scope), e)
        await response(scope, receive, send)


async def _body(receive: Callable) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPException(400, "client disconnected before sending the whole body")
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def parse(schema: TypeAdapter[T], raw: bytes) -> T:
    """A body validated straight from its bytes by pydantic's JSON parser, with the same checks and the same 422 as a
    FastAPI body parameter: FastAPI would build a dict first and validate that, which costs more per request."""
    try:
        return schema.validate_json(raw)
    except ValidationError as e:  # a body that is not UTF-8 JSON is an error about bytes: not echoed as `input`
        raise RequestValidationError([{**{k: v for k, v in err.items() if not isinstance(v, bytes)},
                                       "loc": ("body", *err["loc"])} for err in e.errors(include_url=False)],
                                     body=None) from None
