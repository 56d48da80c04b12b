"""A finished run behind an HTTP API (FastAPI + uvicorn): `/predict`, `/predict/batch`, `/info`,
`/health`, with request batching, upload limits and an optional API key; the library behind
`medtrain serve`."""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from medtrain import __version__
from medtrain.analysis.measurements import check_spacing
from medtrain.data.readers import ImageTooLargeError, UnsupportedFormatError
from medtrain.errors import ConfigError, MedtrainError
from medtrain.inference.predictor import Predictor
from medtrain.io import json_safe
from medtrain.values import names

API_KEY_HEADER = "X-API-Key"
PROTECTED_PATHS = ("/predict", "/predict/batch")
MAX_NAME_CHARS = 200  # upload names are echoed in results and errors


def error_status(err: MedtrainError) -> int:
    """The HTTP status of a refused upload: 415 unknown format, 413 too many pixels, else 422."""
    if isinstance(err, UnsupportedFormatError):
        return 415
    if isinstance(err, ImageTooLargeError):
        return 413
    return 422


def json_response(content: Any, status_code: int = 200, headers=None) -> Response:
    """JSON without FastAPI's generic encoder (results are plain already); NaN and inf become null."""
    body = json.dumps(json_safe(content), separators=(",", ":"), allow_nan=False)
    return Response(body, status_code, headers, media_type="application/json")


def parse_spacing(text: str | None) -> tuple[float, float] | None:
    """`0.5,0.5`, `[0.5,0.5]` or one number (square pixels) as (row_mm, col_mm); None: not given.

    Raises:
        ConfigError: anything but one or two positive numbers.
    """
    if text is None or not text.strip():
        return None
    parts = names(text)
    try:
        values = [float(p) for p in parts]
    except ValueError as err:
        raise ConfigError(f"spacing={text!r} must be row_mm,col_mm (e.g. 0.5,0.5)") from err
    return check_spacing(values * 2 if len(values) == 1 else values)


# The booleans pydantic accepts, as FastAPI read `overlay` before the handlers parsed it themselves.
FLAGS = {"true": True, "t": True, "yes": True, "y": True, "on": True, "1": True}
FLAGS |= {"false": False, "f": False, "no": False, "n": False, "off": False, "0": False}


def parse_flag(name: str, text: str) -> bool:
    """`true`/`false` (or yes/no, on/off, 1/0, ...) as a bool.

    Raises:
        ConfigError: any other text.
    """
    try:
        return FLAGS[text.strip().lower()]
    except KeyError:
        raise ConfigError(f"{name}={text[:50]!r} must be true or false") from None


def form_or_query(form: FormData, request: Request, name: str) -> str | None:
    """A text parameter from the multipart form, else from the query string; None: neither."""
    value = form.get(name)
    return value if isinstance(value, str) and value else request.query_params.get(name)


def upload_schema(field: str, description: str) -> dict[str, Any]:
    """The OpenAPI of a prediction request, as FastAPI wrote it for the equivalent signature (the
    handlers read their requests themselves, so FastAPI cannot infer it)."""
    upload = {"type": "string", "contentMediaType": "application/octet-stream"}
    files = {"type": "array", "items": upload} if field == "files" else upload
    overlay = {"type": "boolean", "description": "segmentation: add a base64 PNG overlay"}
    spacing = {"type": "string", "description": "segmentation: row_mm,col_mm"}
    form = {
        "type": "object",
        "required": [field],
        "properties": {
            field: {**files, "description": description},
            "overlay": overlay,
            "spacing": spacing,
        },
    }
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in (("overlay", {**overlay, "default": False}), ("spacing", spacing))
        ],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
    }


class RequestGuard:
    """ASGI middleware that refuses a request before its body is read: a missing or wrong API key on
    the prediction paths (401), a declared Content-Length over the limit (413); and stops one whose
    body grows over the limit while it arrives (chunked, or a Content-Length that lies)."""

    def __init__(self, app: ASGIApp, max_bytes: int, api_key: str | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.api_key = api_key.encode() if api_key else None
        self.too_large = (
            f"the request is over the upload limit of {max_bytes / 2**20:g} MB (max_upload_mb)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # names arrive lower-cased
        refusal = self._refusal(scope["path"], headers)
        if refusal is not None:
            await json_response({"detail": refusal[1]}, refusal[0])(scope, receive, send)
            return
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            # Raised inside FastAPI's body parsing, which passes HTTPExceptions on to the handler.
            if received > self.max_bytes:
                raise HTTPException(413, self.too_large)
            return message

        await self.app(scope, counted_receive, send)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        if self.api_key is not None and path.rstrip("/") in PROTECTED_PATHS:
            given = headers.get(API_KEY_HEADER.lower().encode(), b"")
            if not hmac.compare_digest(given, self.api_key):
                what = "wrong" if given else "missing"
                return 401, f"{what} API key: send it in the {API_KEY_HEADER} header"
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return 413, self.too_large
        return None


@dataclass(eq=False)  # compared by identity: a request's job, whatever it holds
class Job:
    """One request's uploads (bytes, name) and, once predicted, its results or its error."""

    uploads: list[tuple[bytes, str]]
    spacing: tuple[float, float] | None
    overlay: bool
    results: list[dict[str, Any]] | None = None
    error: Exception | None = None

    @property
    def done(self) -> bool:
        return self.results is not None or self.error is not None


class BatchingPredictor:
    """A `Predictor` shared by concurrent requests: one model call at a time, run in a worker thread
    (so the event loop keeps reading requests and answering /health), each call taking the requests
    that queued up behind it as one batch of at most `max_images` images.

    Batching spreads the fixed cost of a call (Python, torch dispatch) over the requests waiting;
    batched and single predictions agree to float rounding (about 1e-7). One request's bad upload
    fails only that request.
    """

    def __init__(self, predictor: Predictor, max_images: int = 32):
        self.predictor = predictor
        self.max_images = max_images
        self.pending: list[Job] = []
        self.lock = anyio.Lock()  # first come, first served

    async def predict(
        self, uploads: list[tuple[bytes, str]], spacing=None, overlay: bool = False
    ) -> list[dict[str, Any]]:
        """The JSON-ready results of one request's uploads, in order (the task's `to_json`).

        Raises:
            MedtrainError: an upload that cannot be read or predicted (naming it); anything else
                the predictor raised.
        """
        job = Job(uploads, spacing, overlay)
        self.pending.append(job)
        async with self.lock:
            if not job.done:  # else an earlier holder of the lock took it along
                await run_in_threadpool(self.run, self.take(job))
        if job.error is not None:
            raise job.error
        return job.results  # type: ignore[return-value]

    def take(self, job: Job) -> list[Job]:
        """`job` and the requests queued behind it, up to `max_images` images in all."""
        if job in self.pending:
            self.pending.remove(job)
        jobs, images = [job], len(job.uploads)
        while self.pending and images + len(self.pending[0].uploads) <= self.max_images:
            images += len(self.pending[0].uploads)
            jobs.append(self.pending.pop(0))
        return jobs

    def run(self, jobs: list[Job]) -> None:
        """Decode and predict `jobs` (in a worker thread), setting each one's results or error."""
        groups: dict[Any, list[tuple[Job, list]]] = {}
        for job in jobs:
            try:
                images = [self.predictor.decode(data, name) for data, name in job.uploads]
            except Exception as err:
                job.error = err
                continue
            groups.setdefault(job.spacing, []).append((job, images))
        for spacing, members in groups.items():
            self._predict(members, spacing)

    def _predict(self, members: list[tuple[Job, list]], spacing) -> None:
        images = [image for _, decoded in members for image in decoded]
        names = [name for job, _ in members for _, name in job.uploads]
        try:
            results = self.predictor.predict(images, names, spacing)
        except Exception as err:
            if len(members) == 1:
                members[0][0].error = err
            else:  # find the request at fault: each alone
                for member in members:
                    self._predict([member], spacing)
            return
        start = 0
        task = self.predictor.task
        for job, decoded in members:
            mine = results[start : start + len(decoded)]
            start += len(decoded)
            try:
                job.results = [
                    {"file": name, **task.to_json(result, job.overlay)}
                    for (_, name), result in zip(job.uploads, mine, strict=True)
                ]
            except Exception as err:
                job.error = err


def create_app(
    predictor: Predictor,
    max_upload_bytes: int = 20 * 2**20,
    api_key: str | None = None,
    max_batch: int = 32,
) -> FastAPI:
    """The HTTP API of one `medtrain.inference.Predictor`; concurrent requests are predicted in
    batches (`BatchingPredictor`).

    Errors are JSON `{"detail": "..."}`: 413 body over `max_upload_bytes`, an image declaring more
    pixels than the predictor allows, or more than `max_batch` files; 415 bytes of no readable
    format; 422 a file that does not decode or fit the model, a missing `file` field or a bad
    parameter; 400 a malformed multipart body; 401 a missing or wrong `X-API-Key` when `api_key`
    is set; 404/405 unknown paths and methods; 500 anything unexpected (logged by the server with
    its traceback, which the client never sees).

    Args:
        predictor: a `Predictor` (or an object with its `info`, `decode`, `predict`, `task`,
            `class_names`).
        api_key: required on POST /predict and /predict/batch when given.
    """
    info = predictor.info()  # a finished run does not change: read metrics.json once
    batcher = BatchingPredictor(predictor, max_images=max_batch)
    # Declared so /docs shows the key (its Authorize button); RequestGuard enforces it.
    security = [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))] if api_key else []
    app = FastAPI(
        title=f"medtrain {predictor.task.name}",
        version=__version__,
        description=f"Predictions of a finished medtrain run ({predictor.task.name}; classes "
        f"{', '.join(predictor.class_names)}), through its own evaluation preprocessing.",
    )

    async def predict_form(request: Request, field: str, many: bool) -> list[dict]:
        """The results of the uploads in form field `field` (the last one unless `many`), in order;
        `overlay` and `spacing` from the form, else the query.

        The handlers read the request themselves: FastAPI's validation of a declared signature of
        five parameters took 0.07 ms a request (a quarter of the framework's time; more once the
        model call has flushed the CPU caches)."""
        try:
            form = await request.form()
        except HTTPException:  # 400 malformed multipart, or 413 from RequestGuard
            raise
        except Exception as err:  # the multipart parser's other refusals, as FastAPI answered them
            raise HTTPException(400, "There was an error parsing the body") from err
        try:
            files = form.getlist(field) if many else form.getlist(field)[-1:]
            hint = f"send each image as a multipart/form-data file field named {field!r}"
            if not files:
                raise HTTPException(422, f"{field}: Field required ({hint})")
            if not all(isinstance(f, UploadFile) for f in files):
                raise HTTPException(422, f"{field}: expected a file, got a text field ({hint})")
            if len(files) > max_batch:
                raise HTTPException(413, f"{len(files)} files; at most {max_batch} per request")
            overlay = parse_flag("overlay", form_or_query(form, request, "overlay") or "false")
            spacing_mm = parse_spacing(form_or_query(form, request, "spacing"))
            uploads = [(await f.read(), (f.filename or "upload")[-MAX_NAME_CHARS:]) for f in files]
        finally:
            await form.close()
        # Checked always; kept only where the task measures in mm, so that requests of other
        # tasks batch together whatever spacing they sent.
        use = spacing_mm if predictor.task.uses_spacing else None
        return await batcher.predict(uploads, use, overlay)

    @app.get("/health", summary="Liveness check")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", summary="Task, classes, expected input, test metrics, weights checksum")
    async def get_info() -> Response:
        return json_response(info)

    @app.post(
        "/predict",
        summary="Predict one image",
        dependencies=security,
        openapi_extra=upload_schema("file", "PNG, JPEG, TIFF, DICOM, NPY or NPZ"),
    )
    async def predict(request: Request) -> Response:
        """Classification: `probabilities` and `label`; regression: `values` (and `value`);
        segmentation: `mask` (base64 PNG: pixel values per class in `mask_values`),
        `measurements` and `totals` in `units` of the `spacing` used (the form or query field,
        else the file's, else the run's, else pixels)."""
        return json_response((await predict_form(request, "file", many=False))[0])

    @app.post(
        "/predict/batch",
        summary="Predict several images",
        dependencies=security,
        openapi_extra=upload_schema("files", "one field `files` per image"),
    )
    async def predict_batch(request: Request) -> Response:
        """A list of results in the order of the files, each as from /predict. All or nothing: one
        file that cannot be read or predicted fails the whole request, its error naming the file."""
        return json_response(await predict_form(request, "files", many=True))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> Response:
        return json_response({"detail": str(err.detail)}, err.status_code, err.headers)

    @app.exception_handler(MedtrainError)
    async def refused_input(request: Request, err: MedtrainError) -> Response:
        return json_response({"detail": str(err)}, error_status(err))

    @app.exception_handler(Exception)  # uvicorn logs the traceback; the server keeps running
    async def internal_error(request: Request, err: Exception) -> Response:
        return json_response({"detail": "internal server error (details in the server log)"}, 500)

    app.add_middleware(RequestGuard, max_bytes=int(max_upload_bytes), api_key=api_key)
    return app
