"""`medtrain [verb] [arguments]`: one command for every tool.

Each verb is a module of this package with a `main(argv) -> int` (the exit status: 0 done, 1 the
work failed, 2 bad input). Modules are imported only when their verb runs, so `medtrain --help`
and training never load the web server or the exporter; and a verb imports the modules that do
its work inside `main`, after its own `--help`, which so answers at once. Without a verb, the arguments are
training overrides: `medtrain model=resnet18` equals `medtrain train model=resnet18`, and
`python -m medtrain ...` equals `medtrain ...`.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

from medtrain import __version__

# verb -> (module, one line for `medtrain --help`), in the order a user meets them.
VERBS: dict[str, tuple[str, str]] = {
    "train": ("train", "train and test a model from the config (the default verb)"),
    "predict": ("predict", "a finished run's predictions for image files, folders or a CSV"),
    "serve": ("serve", "a finished run behind an HTTP API (/predict, /info, /health, /ready)"),
    "export": ("export", "a finished run as ONNX or TorchScript with a manifest.json"),
    "sweep": ("sweep", "an Optuna search over config values, pruned and resumable"),
    "rerun": ("rerun", "train a finished run again and check that it reproduces"),
    "compare": ("compare", "finished runs side by side: config differences and metrics"),
    "evaluate": ("evaluate", "a finished run scored on new labelled images (an external test set)"),
    "report": ("report", "(re)write a run's report.html or a sweep's summary"),
    "measure": ("measure", "measure the objects of mask files (areas, perimeters, counts)"),
    "check-data": ("check_data", "read every sample of every split and report problems"),
    "ensemble": ("ensemble", "evaluate finished runs together by averaging their outputs"),
    "cv": ("cv", "k-fold cross-validation: out-of-fold metrics and a fold ensemble"),
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


# Hydra's flags that take a value (`--config-dir my_conf`); `--info` may take one of its words.
VALUE_FLAGS = frozenset(
    ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-p", "--package")
    + ("-c", "--cfg", "--experimental-rerun")
)
INFO_WORDS = frozenset(("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"))
SEARCHPATH_HINT = "your config folder as 'hydra.searchpath=[file://FOLDER]'"


def first_word(argv: Sequence[str]) -> int:
    """The index of the first argument that is neither a Hydra flag nor a flag's value."""
    k = 0
    while k < len(argv) and argv[k].startswith("-"):
        flag = argv[k]
        takes_value = flag in VALUE_FLAGS or (
            flag == "--info" and k + 1 < len(argv) and argv[k + 1] in INFO_WORDS
        )
        k += 2 if takes_value else 1
    return k


def verb_of(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The verb of a command line and the rest of it: the first word, after any Hydra flags
    (`medtrain --config-dir my_conf train ...`); `train` when that word is an override
    (`model=cnn`, `+key=value`, `~key`) or there is none.

    Raises:
        SystemExit: 2, with a message, for a word that is no verb (naming the closest one), and
            for another verb after Hydra's flags, which belong to training.
    """
    argv = list(argv)
    if argv[:1] and argv[0] in HELP:
        return "help", argv[1:]
    if argv[:1] and argv[0] in ("--version", "-V"):
        return "version", argv[1:]
    k = first_word(argv)
    if k == len(argv) or "=" in argv[k] or argv[k].startswith(("+", "~")):
        return "train", argv
    word = argv[k]
    if word in VERBS and (k == 0 or word == "train"):
        return word, argv[:k] + argv[k + 1 :]
    if word in VERBS:
        message = (
            f"put the verb first (medtrain {word} ...): {' '.join(argv[:k])} are Hydra flags of "
            f"training; the verbs that take training overrides take {SEARCHPATH_HINT}"
        )
    else:
        close = difflib.get_close_matches(word.replace("_", "-"), list(VERBS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = f"unknown verb {word!r}{hint} (medtrain --help lists them)"
    print(f"medtrain: {message}", file=sys.stderr)
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
    if verb == "version":
        print(f"medtrain {__version__}")
        return 0
    from medtrain.engine.ranks import under_torchrun

    if verb != "train" and under_torchrun():
        print(
            f"medtrain: `medtrain {verb}` runs as one process; under torchrun only training runs "
            "(torchrun ... -m medtrain [train] overrides). Sweeps take several workers with "
            "sweep.storage=...; `medtrain rerun` starts torchrun itself (docs/scaling.md)",
            file=sys.stderr,
        )
        return 2
    from medtrain.engine.memory import keep_freed_memory

    keep_freed_memory()  # before the verb allocates: glibc keeps what a step frees for the next
    module = importlib.import_module(f"medtrain.commands.{VERBS[verb][0]}")
    return module.main(rest)
