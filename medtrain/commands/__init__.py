"""`medtrain [verb] [arguments]`: one command for every tool.

Each verb is a module of this package with a `main(argv) -> int` (the exit status: 0 done, 1 the
work failed, 2 bad input). Modules are imported only when their verb runs, so `medtrain --help`
and training never load the web server or the exporter. Without a verb, the arguments are
training overrides: `medtrain model=resnet18` equals `medtrain train model=resnet18`, and
`python -m medtrain ...` equals `medtrain ...`.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

# verb -> (module, one line for `medtrain --help`), in the order a user meets them.
VERBS: dict[str, tuple[str, str]] = {
    "train": ("train", "train and test a model from the config (the default verb)"),
    "predict": ("predict", "a finished run's predictions for image files, folders or a CSV"),
    "serve": ("serve", "a finished run behind an HTTP API (/predict, /info, /health)"),
    "export": ("export", "a finished run as ONNX or TorchScript with a manifest.json"),
    "sweep": ("sweep", "an Optuna search over config values, pruned and resumable"),
    "rerun": ("rerun", "train a finished run again and check that it reproduces"),
    "compare": ("compare", "finished runs side by side: config differences and metrics"),
    "report": ("report", "(re)write a run's report.html or a sweep's summary"),
    "measure": ("measure", "measure the objects of mask files (areas, perimeters, counts)"),
    "check-data": ("check_data", "read every sample of every split and report problems"),
    "ensemble": ("ensemble", "evaluate finished runs together by averaging their outputs"),
}
HELP = ("-h", "--help", "help")


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [f"  {verb:<{width}}  {summary}" for verb, (_, summary) in VERBS.items()]
    return (
        "usage: medtrain [verb] [arguments]\n\n"
        "verbs:\n" + "\n".join(lines) + "\n\n"
        "Without a verb the arguments are training overrides (medtrain model=resnet18 equals\n"
        "medtrain train model=resnet18). `medtrain <verb> --help` shows a verb's options;\n"
        "`medtrain train --help` lists the config groups and the current config.\n"
    )


def verb_of(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The verb named first on the command line and the rest of it; `train` when the first
    argument is an override or a Hydra flag (`model=cnn`, `-m`, `+key=value`, `~key`).

    Raises:
        SystemExit: 2 (with the closest verb) for a first word that is neither.
    """
    argv = list(argv)
    if not argv:
        return "train", []
    if argv[0] in HELP:
        return "help", argv[1:]
    first = argv[0]
    if first in VERBS:
        return first, argv[1:]
    if "=" in first or first.startswith(("-", "+", "~")):
        return "train", argv
    close = difflib.get_close_matches(first.replace("_", "-"), list(VERBS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    print(f"medtrain: unknown verb {first!r}{hint} (medtrain --help lists them)", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the verb named on the command line (`sys.argv[1:]` by default); returns its status."""
    try:
        verb, rest = verb_of(sys.argv[1:] if argv is None else argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if verb == "help":
        print(usage(), end="")
        return 0
    module = importlib.import_module(f"medtrain.commands.{VERBS[verb][0]}")
    return module.main(rest)
