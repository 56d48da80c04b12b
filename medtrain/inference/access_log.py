"""The service's access log (`medtrain serve access_log=true`): one line of medtrain's a request,
with its status, time, bytes received and an error's detail, never the file names or values it
carried (patient data, in a clinic); `RequestGuard` writes it, `make_server` configures it."""

from __future__ import annotations

import copy
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.types import Scope

# One line a request when `access_log=true` (`make_server` sets its level and handler).
access_log = logging.getLogger("medtrain.access")
MAX_DETAIL_CHARS = 200  # of an error's detail in its access-log line


@dataclass
class Answer:
    """What a request was answered, for its access-log line: status (0: none yet), the body of an
    error (its JSON detail), or the exception that made it a 500."""

    status: int = 0
    body: bytes = b""
    failure: str = ""


def private_text(scope: Scope) -> list[str]:
    """The request's texts its log line must not show (uploaded file names, form and query
    values: patient data, in a clinic), which the application adds to as it reads them."""
    return scope.setdefault("medtrain.private", [])


def redacted(text: str, private: list[str]) -> str:
    """`text` with each of `private`'s texts, as given or quoted and cut as errors quote them,
    replaced by `<redacted>` where it stands apart from other letters and digits."""
    forms = {f for value in private if value for f in (value, value[:50])}
    forms |= {repr(f)[1:-1] for f in forms}
    for value in sorted(forms, key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "<redacted>", text)
    return text


def access_line(scope: Scope, answer: Answer, received: int, began: float) -> str:
    """One request's access-log line: client, method, path (not the query, which may hold
    clinical values), status, milliseconds, bytes received and, for an error, its detail
    (without the request's file names and values, cut at `MAX_DETAIL_CHARS`)."""
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    status = answer.status or (500 if answer.failure else 0)
    ms = (time.perf_counter() - began) * 1000
    line = f"{where} - {scope['method']} {scope['path'][:200]} {status or '-'} {ms:.1f} ms"
    line += f" {received} B in"
    if answer.failure:
        return f"{line}: unexpected {answer.failure} (traceback in the server log)"
    if status < 400:
        return line
    try:
        detail = str(json.loads(answer.body)["detail"])
    except (ValueError, TypeError, KeyError):
        return line
    private = private_text(scope)
    private += [v for _, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)]
    detail = redacted(detail, private)
    cut = detail[:MAX_DETAIL_CHARS] + ("..." if len(detail) > MAX_DETAIL_CHARS else "")
    return f"{line}: {cut}"


def log_config(access_log: bool) -> dict[str, Any]:
    """uvicorn's logging, with medtrain's access log (`medtrain.access`: one line a request, on
    standard output as uvicorn's was) on or off."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["handlers"]["requests"] = {
        "formatter": "default",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stdout",
    }
    level = "INFO" if access_log else "WARNING"
    config["loggers"]["medtrain.access"] = {
        "handlers": ["requests"],
        "level": level,
        "propagate": False,
    }
    return config
