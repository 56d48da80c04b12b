"""Finished runs applied to new data: rebuilding a run (`run`), predicting images (`predictor`) and
files (`predict`), serving them over HTTP (`serve`), exporting them (`export`, `export_manifest`)
and averaging several runs (`ensemble`).

`from medtrain.inference import Predictor` (and `LoadedRun`, `load_run`, `eval_preprocessing`)
works as in release 0.1; the names are loaded on first use, so that importing one module of the
package does not import them all."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "Predictor": "medtrain.inference.predictor",
    "LoadedRun": "medtrain.inference.run",
    "load_run": "medtrain.inference.run",
    "eval_preprocessing": "medtrain.inference.run",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medtrain.inference' has no attribute {name!r}")
