"""Errors as each API defines them.

Routes raise `APIError` (or let a `YunqueError` escape, which is the caller's mistake: 400);
the handlers installed by `install_error_handlers` render it as Ollama's `{"error": "..."}`
under `/api` and the web UI, or as OpenAI's `{"error": {"message", "type", "param", "code"}}`
under `/v1`. Anything else is a bug: logged with its traceback, answered with a 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from yunque.errors import YunqueError

log = logging.getLogger("yunque.server")

# OpenAI's error `type` for each status we produce.
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    503: "server_error",
}
_OPENAI_CODES = {401: "invalid_api_key", 404: "model_not_found", 503: "server_busy"}


class APIError(YunqueError):
    """An answer other than 200: an HTTP status and one sentence for the caller.

    A `YunqueError`, so library code shared with the CLI (`yunque run` in-process) reads as
    one sentence there too.
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


class ModelNotFound(APIError):
    def __init__(self, name: str) -> None:
        super().__init__(404, f"model '{name}' not found; see `yunque list`, or add it with `yunque import`", param="model")


class ServerBusy(APIError):
    def __init__(self) -> None:
        super().__init__(503, "server busy: too many requests are queued; retry shortly")


def in_stream_error(exc: Exception) -> APIError:
    """The error to write into a stream whose 200 status line is already sent; bugs are logged with their traceback."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, YunqueError):
        return APIError(400, str(exc))
    log.error("generation failed mid-stream", exc_info=exc)
    return APIError(500, f"generation failed ({type(exc).__name__}); see the server log")


def error_body(path: str, err: APIError) -> dict:
    """The JSON body for `err` in the dialect of the API that `path` belongs to."""
    if path.startswith("/v1"):
        return {
            "error": {
                "message": err.message,
                "type": _OPENAI_TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error"),
                "param": err.param,
                "code": err.code or _OPENAI_CODES.get(err.status),
            }
        }
    return {"error": err.message}


def error_response(request: Request, err: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(error_body(request.url.path, err), status_code=err.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One sentence from pydantic's list of problems: the first one, with where it is."""
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc)
    if first.get("type") == "missing":
        return f"field '{where}' is required", where or None
    msg = first.get("msg", "is invalid")
    return (f"field '{where}': {msg}" if where else f"invalid request body: {msg}"), where or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(YunqueError)
    async def _user_error(request: Request, exc: YunqueError) -> JSONResponse:
        return error_response(request, APIError(400, str(exc)))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(request, APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(request, APIError(exc.status_code, message))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return error_response(request, APIError(500, f"internal error ({type(exc).__name__}); see the server log"))
