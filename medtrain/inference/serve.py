"""A finished run behind an HTTP API (FastAPI + uvicorn): `/predict`, `/predict/batch`, `/info`,
`/health`, `/ready` and a web page, with request batching, bounded work per request and an
optional API key; the library behind `medtrain serve`. The protections below the application
(timeouts, connection limit, draining) are in `medtrain.inference.guard`."""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import anyio
import torch
import uvicorn
from fastapi import FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response

from medtrain import __version__
from medtrain.analysis.measurements import check_spacing
from medtrain.analysis.volume_results import nifti_bytes
from medtrain.data.readers import MAX_PIXELS, ImageTooLargeError, UnsupportedFormatError
from medtrain.data.volume_transforms import spatial_size
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.inference.access_log import log_config, private_text
from medtrain.inference.guard import (
    API_KEY_HEADER,
    MAX_HEADER_BYTES,
    RETRY_AFTER_S,
    DrainingServer,
    RequestGuard,
    ServiceState,
    Timeouts,
    protocol_with,
)
from medtrain.inference.predictor import VOLUME_SPACING, Predictor, Prepared, SlicedVolume
from medtrain.inference.run import volume_run
from medtrain.inference.web import add_web_routes
from medtrain.io import json_safe
from medtrain.models.sliding_window import window_count
from medtrain.tasks.tta import tta_views
from medtrain.values import names

logger = logging.getLogger(__name__)
MAX_NAME_CHARS = 200  # upload names are echoed in results and errors
# Outputs of at most this many numbers an image (image-level: class scores, values) become answers
# on the event loop: a few dict entries, cheaper than the hop to a worker thread and back (about
# 0.1 ms of a 2 ms request). Pixel maps (masks, measurements, overlays) are answered in a worker.
SMALL_OUTPUT = 1024
# A model call expected to take at most this long (from the last call's time per image) runs on
# the event loop: cheaper than the hop to a worker thread and back (about 0.1-0.2 ms), and short
# enough not to hold other requests. Uploads are always decoded in worker threads.
INLINE_MODEL_S = 0.002


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
        raise ConfigError(
            f"{name}={text[:50]!r} must be true or false (or yes/no, on/off, 1/0)"
        ) from None


def flag_text(value: str | None) -> str:
    """A flag's text as given, `false` when it is not given."""
    return "false" if value is None else value


# The parameters /predict and /predict/batch take besides their file field(s).
PARAMETERS = {"overlay", "spacing", "mask_nifti"}


def used_parameters(predictor: Predictor) -> set[str]:
    """The parameters of `PARAMETERS` that mean something for this run (its clinical fields
    besides): `overlay` for 2D images (a picture for segmentation), `spacing` for 2D runs (a
    volume states its own), `mask_nifti` for runs that segment volumes."""
    used = set(predictor.clinical_columns)
    if not predictor.reads_volumes:
        used |= {"overlay", "spacing"}
    elif predictor.task.targets == "masks":
        used.add("mask_nifti")
    return used


def clinical_fields(
    form: FormData, request: Request, columns: list[str], count: int
) -> list[dict[str, str]] | None:
    """Each of `count` uploads' clinical values for a model that reads them (None for the
    others): every column a form (or query) field, given once per file, in the files' order.

    Raises:
        HTTPException: 422 naming a column not given, or given another number of times.
    """
    if not columns:
        return None
    values = {}
    for column in columns:
        given = [v for v in form.getlist(column) if isinstance(v, str)]
        given = given or request.query_params.getlist(column)
        if len(given) != count:
            raise HTTPException(
                422,
                f"{column}: this run's model reads the clinical values {columns} besides the "
                f"image; send each as a form field, once per file ({count}; got {len(given)}; "
                "an empty value is a missing one)",
            )
        values[column] = given
    return [{c: values[c][k] for c in columns} for k in range(count)]


def form_or_query(form: FormData, request: Request, name: str) -> str | None:
    """A text parameter from the multipart form or the query string; None: neither.

    Raises:
        ConfigError: given more than once (`?overlay=true&overlay=false`: the last one won).
    """
    given = [v for v in form.getlist(name) if isinstance(v, str)]
    given += request.query_params.getlist(name)
    if len(given) > 1:
        raise ConfigError(f"{name} is given {len(given)} times ({given[:3]}); give it once")
    return given[0] if given else None


def upload_schema(field: str, description: str) -> dict[str, Any]:
    """The OpenAPI of a prediction request, as FastAPI wrote it for the equivalent signature (the
    handlers read their requests themselves, so FastAPI cannot infer it)."""
    upload = {"type": "string", "contentMediaType": "application/octet-stream"}
    files = {"type": "array", "items": upload} if field == "files" else upload
    overlay = {"type": "boolean", "description": "segmentation: add a base64 PNG overlay"}
    spacing = {"type": "string", "description": "segmentation: row_mm,col_mm"}
    nifti = {
        "type": "boolean",
        "description": "segmentation of volumes: add the label volume as a base64 .nii.gz",
    }
    form = {
        "type": "object",
        "required": [field],
        "properties": {
            field: {**files, "description": description},
            "overlay": overlay,
            "spacing": spacing,
            "mask_nifti": nifti,
        },
    }
    query = (
        ("overlay", {**overlay, "default": False}),
        ("spacing", spacing),
        ("mask_nifti", {**nifti, "default": False}),
    )
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in query
        ],
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
    }


@dataclass(frozen=True)
class ServeLimits:
    """What one request, and the service as a whole, may cost (the `medtrain serve` keys of the
    same names; docs/deployment.md lists them with the memory they bound).

    Attributes:
        max_upload_mb: largest request body (all files of a batch together): 413 beyond it.
        max_batch: most files in one /predict/batch request.
        max_pixels: most pixels of one image, read from its header before decoding (413 beyond);
            None: what the run's preprocessing can use (`pixel_limit`).
        max_request_mb: memory the decoded and preprocessed images of one request may hold.
        max_objects: objects measured one by one per image (segmentation); beyond it the answer
            gives totals only.
        max_concurrent: prediction requests in flight (queued or running), from when their
            whole body is in; more: 503 with Retry-After, and /ready answers 503.
        workers: requests decoding, preprocessing or measuring at once (outside the model lock).
        timeouts: header, body and idle timeouts and the connection limit (`guard.Timeouts`).
        shutdown_s: on SIGTERM, how long requests in flight may take before they are cancelled.
        drain_s: on SIGTERM, how long /ready says 503 while requests are still served, before
            the shutdown starts (for a load balancer to notice).
    """

    max_upload_mb: float = 20
    max_batch: int = 32
    max_pixels: int | None = None
    max_request_mb: float = 256
    max_objects: int = 1000
    max_concurrent: int = 32
    workers: int = 2
    timeouts: Timeouts = Timeouts()
    shutdown_s: float = 10.0
    drain_s: float = 0.0


FLOOR_PIXELS = 2048 * 2048  # any run accepts images this large


def pixel_limit(predictor: Predictor) -> int:
    """The most pixels an image sent to this run may declare: 64 times the model's input for a
    run that resizes its images (detail beyond that is averaged away), at least 2048 x 2048 and
    at most `MAX_PIXELS`; 2048 x 2048 for runs that predict at the image's own size (and voxels
    of volumes alike)."""
    preprocess = predictor.preprocess
    dims = int(getattr(preprocess, "spatial_dims", 2))
    size = spatial_size(getattr(preprocess, "image_size", None), "dataset.image_size", dims)
    if size is None or not preprocess.resize_to_input_size:
        return FLOOR_PIXELS
    return min(MAX_PIXELS, max(FLOOR_PIXELS, 64 * math.prod(size)))


@dataclass(eq=False)  # compared by identity: a request's job, whatever it holds
class Job:
    """One request's prepared images and, once through the model, its outputs or its error."""

    items: list[Prepared]
    outputs: list[torch.Tensor] | None = None
    error: Exception | None = None

    @property
    def done(self) -> bool:
        return self.outputs is not None or self.error is not None


class TakingTurns:
    """A network whose every call, made in a worker thread, waits for `turn` (the model queue's:
    one model call at a time) and gives it back after: the requests that queued up during one
    call of a long inference are served before its next one. Other attributes are the network's."""

    def __init__(self, network: Any, turn: anyio.Semaphore):
        self.network = network
        self.turn = turn

    def __call__(self, *inputs: Any, **named: Any) -> Any:
        anyio.from_thread.run(self.turn.acquire)
        try:
            return self.network(*inputs, **named)
        finally:
            anyio.from_thread.run_sync(self.turn.release)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.network, name)


class ModelQueue:
    """A `Predictor`'s model shared by concurrent requests: one model call at a time, run in a
    worker thread (so the event loop keeps reading requests and answering /health), each call
    taking the requests that queued up behind it as one batch of at most `max_images` images.
    Decoding, preprocessing and measuring happen outside, in the requests' own threads.

    Batching spreads the fixed cost of a call (Python, torch dispatch) over the requests waiting;
    batched and single predictions agree to float rounding (about 1e-7). One request's bad input
    fails only that request.

    A segmentation run with a sliding window (`task.inference.window`) predicts an image in
    calls of `task.inference.batch_size` windows. A request whose windows (all its images and
    test-time views) need more than one call takes its turn before each call rather than once
    for all of them (`TakingTurns`), so that the requests queued meanwhile are served between
    its calls instead of after its whole image; its result is `Predictor.predict`'s, the same
    calls on the same windows in the same order. At most `tiling` such requests run at once (the
    window buffers of each are held in memory), and the others are batched only as far as their
    windows fit in one call.
    """

    def __init__(self, predictor: Predictor, max_images: int = 32, tiling: int = 2):
        self.predictor = predictor
        self.max_images = max_images
        self.pending: list[Job] = []
        # Held for each model call. A semaphore, not a lock: a tiled request's worker thread
        # takes and gives it back through the event loop, as different tasks. First come, first
        # served (anyio hands it to the longest waiter).
        self.turn = anyio.Semaphore(1)
        # Tiled requests' threads: a bounded number at once (each holds its images' window
        # buffers), on threads of their own, so that those waiting for a turn never take the
        # threads the holder of the turn needs.
        self.tiling = anyio.CapacityLimiter(tiling)
        self.per_image_s: float | None = None  # the last model call's seconds per image
        task = predictor.task
        self.window = getattr(task, "window", None)
        self.window_batch = int(getattr(task, "window_batch", 1) or 1)

    async def forward(self, items: list[Prepared]) -> list[torch.Tensor]:
        """The model's outputs for one request's prepared images, in order.

        Raises:
            Exception: what the model raised for this request's images.
        """
        if self.windows(items) > self.window_batch:  # many calls, each taking its turn
            network = TakingTurns(self.predictor.model, self.turn)
            return await run_in_threadpool_limited(
                self.tiling, self.predictor.forward, items, network
            )
        job = Job(items)
        self.pending.append(job)
        async with self.turn:
            if not job.done:  # else an earlier holder of the turn took it along
                jobs = self.take(job)
                images = sum(len(j.items) for j in jobs)
                quick = self.per_image_s is not None and self.per_image_s * images <= INLINE_MODEL_S
                if quick and self.window is None:
                    self.run(jobs)  # a short call: cheaper than the hop to a worker and back
                else:
                    await run_in_threadpool(self.run, jobs)
        if job.error is not None:
            raise job.error
        return job.outputs  # type: ignore[return-value]

    def windows(self, items: list[Prepared]) -> int:
        """The windows the model sees for `items` (every image and test-time view; a rotated
        view of a non-square image counted as its largest), 0 without a sliding window."""
        if self.window is None:
            return 0
        task, count = self.predictor.task, 0
        for item in items:
            sides = tuple(item.tensor.shape[1:])  # C x H x W, or C x D x H x W
            size = spatial_size(self.window, "task.inference.window", len(sides))
            turned = (*sides[:-2], sides[-1], sides[-2])
            views = len(tta_views(getattr(task, "tta", None), len(sides)))
            count += views * max(
                window_count(s, size, float(task.overlap)) for s in (sides, turned)
            )
        return count

    def take(self, job: Job) -> list[Job]:
        """`job` and the requests queued behind it, up to `max_images` images in all (and, with
        a sliding window, as many as one call of windows holds)."""
        if job in self.pending:
            self.pending.remove(job)
        jobs, images, windows = [job], len(job.items), self.windows(job.items)
        while self.pending and images + len(self.pending[0].items) <= self.max_images:
            more = self.windows(self.pending[0].items)  # 0 without a window
            if windows + more > self.window_batch:
                break
            images, windows = images + len(self.pending[0].items), windows + more
            jobs.append(self.pending.pop(0))
        return jobs

    def run(self, jobs: list[Job]) -> None:
        """Run the model on `jobs` (in a worker thread), setting each one's outputs or error."""
        items = [item for job in jobs for item in job.items]
        try:
            start = time.perf_counter()
            outputs = self.predictor.forward(items)
            self.per_image_s = (time.perf_counter() - start) / max(len(items), 1)
        except Exception as err:
            if len(jobs) == 1:
                jobs[0].error = err
            else:  # find the request at fault: each alone
                for job in jobs:
                    self.run([job])
            return
        start = 0
        for job in jobs:
            job.outputs = outputs[start : start + len(job.items)]
            start += len(job.items)


def create_app(
    predictor: Predictor, api_key: str | None = None, limits: ServeLimits | None = None
) -> FastAPI:
    """The HTTP API of one `medtrain.inference.Predictor`, bounded by `limits`; run it with
    `make_server` (timeouts, connection limit, draining).

    Errors are JSON `{"detail": "..."}`: 413 body over `max_upload_mb`, an image declaring more
    pixels than `max_pixels`, images needing more than `max_request_mb`, or more than `max_batch`
    files; 415 bytes of no accepted format; 422 a file that does not decode, holds NaN/infinite
    values or does not fit the model, a missing or repeated `file` field or a bad parameter; 400 a
    malformed request; 401 a missing or wrong `X-API-Key` when `api_key` is set (on /predict,
    /predict/batch and /info); 503 over `max_concurrent` requests in flight, or still unanswered at
    the shutdown deadline (Retry-After); 404/405
    unknown paths and methods; 500 anything unexpected (logged by the server with its traceback,
    which the client never sees). Every answer carries the model's weights hash
    (`X-Model-SHA256`).

    Args:
        predictor: a `Predictor` (or an object with its `info`, `decode`, `prepare`, `forward`,
            `result`, `task`, `class_names`, `weights_sha256`).
        api_key: required on POST /predict, /predict/batch and GET /info when given.
    """
    limits = limits or ServeLimits()
    # The multipart parser logs each malformed body it refuses (a stray, unformatted line on the
    # console); the refusal is the 400 answer, which the access log records.
    for name in ("python_multipart", "multipart"):  # the package's logger before 0.0.13
        logging.getLogger(name).setLevel(logging.CRITICAL)
    max_pixels = limits.max_pixels or pixel_limit(predictor)
    predictor.max_pixels = max_pixels
    info = predictor.info()  # a finished run does not change: read metrics.json once
    info["limits"] = {
        "max_upload_mb": limits.max_upload_mb,
        "max_batch": limits.max_batch,
        "max_pixels": max_pixels,
        "max_objects": limits.max_objects,
    }
    queue = ModelQueue(predictor, max_images=limits.max_batch, tiling=limits.workers)
    state = ServiceState(max_in_flight=limits.max_concurrent)
    working = anyio.CapacityLimiter(limits.workers)
    max_request_bytes = int(limits.max_request_mb * 2**20)
    sha = predictor.weights_sha256
    # Declared so /docs shows the key (its Authorize button); RequestGuard enforces it.
    security = [Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))] if api_key else []
    app = FastAPI(
        title=f"medtrain {predictor.task.name}",
        version=__version__,
        description=f"Predictions of a finished medtrain run ({predictor.task.name}; classes "
        f"{', '.join(predictor.class_names)}), through its own evaluation preprocessing.",
        docs_url=None,  # served from local assets by add_web_routes: nothing loads from a CDN
        redoc_url=None,
    )
    app.state.service = state
    app.state.limits = limits
    app.state.weights_sha256 = sha
    add_web_routes(app)

    def prepare_all(
        uploads: list[tuple[bytes, str]], clinical: list[dict[str, str]] | None = None
    ) -> list[Prepared]:
        """Decode and preprocess one request's files (one at a time, so that at most one
        decoded image is held beside the prepared ones), with each file's clinical values for
        a model that reads them."""
        items, held = [], 0
        for k, (data, name) in enumerate(uploads):
            item = prepare_one(data, name, clinical[k] if clinical else None)
            held += item.nbytes
            if held > max_request_bytes:
                raise ImageTooLargeError(
                    f"{name}: the images of this request need over {limits.max_request_mb:g} MB "
                    "once decoded (max_request_mb); send fewer or smaller images"
                )
            items.append(item)
        return items

    def prepare_one(
        data: bytes, name: str, clinical: dict[str, str] | None = None
    ) -> Prepared | SlicedVolume:
        """One upload decoded and preprocessed (a volume for a run trained on its slices: each
        slice); an input is never answered 500: what the readers did not foresee is refused
        naming the file (and logged with its traceback)."""
        try:
            decoded = predictor.decode(data, name)
            if predictor.slices_volumes and decoded.format == "volume":
                return predictor.prepare_sliced(decoded, name)
            return predictor.prepare(decoded, name, clinical=clinical)
        except MedtrainError:
            raise
        except MemoryError as err:
            raise ImageTooLargeError(f"{name}: too large to decode") from err
        except Exception as err:
            logger.exception("reading upload %r failed", name)
            raise DataError(f"{name}: cannot be read ({type(err).__name__})") from err

    def finish(items, outputs, spacing, overlay: bool, nifti: bool = False) -> list[dict]:
        task = predictor.task
        answers = []
        for item, out in zip(items, outputs, strict=True):
            if isinstance(item, SlicedVolume):  # its slices' outputs, put back together
                result = predictor.sliced_result(item, out)
            else:
                result = predictor.result(item, out, spacing, True, limits.max_objects)
            answer = {"file": item.name, **task.to_json(result, overlay)}
            if nifti and "affine" in result:  # a volume's label mask, as a .nii.gz file
                answer["mask_nifti"] = base64.b64encode(
                    nifti_bytes(result["mask"], result["affine"])
                ).decode("ascii")
            answers.append(answer | {"weights_sha256": sha})
        return answers

    async def predict_form(request: Request, field: str, many: bool) -> list[dict]:
        """The results of the uploads in form field `field` (exactly one unless `many`), in
        order; `overlay` and `spacing` from the form, else the query.

        The handlers read the request themselves: FastAPI's validation of a declared signature of
        five parameters took 0.07 ms a request (a quarter of the framework's time; more once the
        model call has flushed the CPU caches)."""
        try:
            form = await request.form()
        except HTTPException:  # 400 malformed multipart, or 413 from RequestGuard
            raise
        except Exception as err:  # the multipart parser's other refusals, as FastAPI answered them
            raise HTTPException(400, "There was an error parsing the body") from err
        # Never shown in the access log: the errors that quote them are logged without them.
        private_text(request.scope).extend(
            text
            for _, value in form.multi_items()
            for text in (
                [value]
                if isinstance(value, str)
                else [value.filename or "", (value.filename or "")[-MAX_NAME_CHARS:]]
            )
        )
        try:
            files = form.getlist(field)
            hint = f"send each image as a multipart/form-data file field named {field!r}"
            if not files:
                raise HTTPException(422, f"{field}: Field required ({hint})")
            if not all(isinstance(f, UploadFile) for f in files):
                raise HTTPException(422, f"{field}: expected a file, got a text field ({hint})")
            if not many and len(files) > 1:
                raise HTTPException(
                    422, f"{len(files)} fields named {field!r}: send one (or use /predict/batch)"
                )
            if len(files) > limits.max_batch:
                raise HTTPException(
                    413, f"{len(files)} files; at most {limits.max_batch} per request"
                )
            columns = predictor.clinical_columns
            given = set(form) - {field} | set(request.query_params)
            unknown = sorted(given - PARAMETERS - set(columns))
            if unknown:  # e.g. clinical values, which a model of images alone never reads
                reads = f"the clinical fields {columns}" if columns else "the image alone"
                raise HTTPException(
                    422,
                    f"unknown parameter(s) {unknown}: {request.url.path} takes the file field "
                    f"{field!r} and, for this run, {sorted(used_parameters(predictor))}; this "
                    f"run reads {reads}",
                )
            clinical = clinical_fields(form, request, columns, len(files))
            # An empty value (`?overlay=`) is refused as any other that is not true or false.
            overlay = parse_flag("overlay", flag_text(form_or_query(form, request, "overlay")))
            if overlay and volume_run(predictor.cfg):
                raise HTTPException(
                    422, "overlay: pictures are of 2D images; a 3D run gives mask_nifti=true"
                )
            nifti = parse_flag("mask_nifti", flag_text(form_or_query(form, request, "mask_nifti")))
            if nifti and "mask_nifti" not in used_parameters(predictor):
                raise HTTPException(
                    422,
                    "mask_nifti: label volumes are of runs that segment volumes; this run's "
                    "answer holds all it gives",
                )
            spacing_text = form_or_query(form, request, "spacing") or None  # empty: none
            if spacing_text is not None and predictor.reads_volumes:  # as medtrain predict
                raise HTTPException(422, f"spacing={spacing_text}: {VOLUME_SPACING}")
            spacing_mm = parse_spacing(spacing_text)
            uploads = [(await f.read(), (f.filename or "upload")[-MAX_NAME_CHARS:]) for f in files]
        finally:
            await form.close()
        # Checked always; used only where the task measures in mm.
        spacing = spacing_mm if predictor.task.uses_spacing else None
        items = await run_in_threadpool_limited(working, prepare_all, uploads, clinical)
        del uploads
        # A sliced volume's slices go through the model like images; their outputs come back
        # to it as a list.
        parts = [item.items if isinstance(item, SlicedVolume) else [item] for item in items]
        flat = await queue.forward([part for group in parts for part in group])
        outputs, start = [], 0
        for item, group in zip(items, parts, strict=True):
            got = flat[start : start + len(group)]
            outputs.append(got if isinstance(item, SlicedVolume) else got[0])
            start += len(group)
        if all(out.numel() <= SMALL_OUTPUT for out in flat):
            return finish(items, outputs, spacing, overlay, nifti)
        return await run_in_threadpool_limited(
            working, finish, items, outputs, spacing, overlay, nifti
        )

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: model loaded, not draining, not saturated")
    async def ready() -> Response:
        ok, why = state.readiness()
        body = {"ready": ok, "status": why, "in_flight": state.in_flight}
        headers = None if ok else {"Retry-After": str(RETRY_AFTER_S)}
        return json_response(body, 200 if ok else 503, headers)

    @app.get(
        "/info",
        summary="Task, classes, expected input, limits, test metrics, weights checksum",
        dependencies=security,
    )
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
        `measurements` (at most `max_objects` objects per image, else totals only) and `totals`
        in `units` of the `spacing` used (the form or query field, else the file's, else the
        run's, else pixels). Every result names the model's `weights_sha256`."""
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

    app.add_middleware(
        RequestGuard,
        max_bytes=int(limits.max_upload_mb * 2**20),
        state=state,
        weights_sha256=sha,
        api_key=api_key,
        protected=("/predict", "/predict/batch", "/info"),
        limited=("/predict", "/predict/batch"),
    )
    return app


async def run_in_threadpool_limited(limiter: anyio.CapacityLimiter, fn, *args) -> Any:
    """`fn(*args)` in a worker thread once one of `limiter`'s slots is free."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)


def make_server(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    access_log: bool = False,
    alive=None,
    **config,
) -> DrainingServer:
    """A uvicorn server for an app of `create_app`, with its limits' timeouts, connection limit
    and shutdown deadline (`server.run()` serves until SIGTERM/SIGINT).

    Args:
        access_log: one line a request (`access_log.access_line`): client, method, path, status,
            milliseconds, bytes received and an error's detail, without the request's file
            names and form and query values.
        alive: for a worker of several server processes, the check that its supervisor is
            still there (`processes.parent_watch`); the server stops when it fails.
        config: other `uvicorn.Config` arguments (e.g. `log_level`).
    """
    limits: ServeLimits = app.state.limits
    config.setdefault("log_config", log_config(access_log))
    settings = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,  # RequestGuard logs each request, with more than uvicorn's line
        http=protocol_with(limits.timeouts, app.state.weights_sha256),
        timeout_keep_alive=max(1, round(limits.timeouts.idle)),
        timeout_graceful_shutdown=max(1, round(limits.shutdown_s)),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        **config,
    )
    return DrainingServer(settings, app.state.service, limits.drain_s, alive)
