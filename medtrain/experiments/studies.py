"""Where a search's Optuna study lives: `<sweep.dir>/study.db` for one worker, or a storage shared
by several (a journal file or an SQL database, named in `<sweep.dir>/study.json`). Light to import:
the sweep summary and `medtrain report` read studies without loading torch."""

from __future__ import annotations

import json
import re
from pathlib import Path

import optuna

from medtrain.errors import ConfigError

STUDY_NAME = "medtrain"
INTERRUPTED = "interrupted"
SURPLUS = "surplus"  # a trial drawn when the others already made up the number: never run
SEARCH = "search"  # the study attribute saying what it searches (overrides, params, monitor)
STUDY_FILE = "study.json"  # where a shared study is kept: what `medtrain report` reopens


def open_storage(spec: str | None, sweep_dir: Path):
    """The Optuna storage of a sweep: `<sweep_dir>/study.db` by default; an SQL database for a URL
    (`postgresql://...`, `mysql://...`, `sqlite:///...`); else an Optuna journal file (one
    machine, or a shared file system: it is locked while written)."""
    if spec is None:
        return f"sqlite:///{Path(sweep_dir) / 'study.db'}"
    if "://" in spec:
        try:
            return optuna.storages.RDBStorage(spec)
        except Exception as err:  # a bad URL, a missing driver, a database that refuses
            raise ConfigError(f"sweep.storage={masked_url(spec)}: cannot open it ({err})") from err
    from optuna.storages.journal import JournalFileBackend

    path = Path(spec)
    if path.is_dir():
        raise ConfigError(f"sweep.storage={spec} is a folder; name a journal file in it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def masked_url(url: str) -> str:
    """A database URL without its password (what is written into the sweep folder and logs)."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def read_study(sweep_dir: Path, storage: str | None = None):
    """The study of a sweep folder (the shared storage `study.json` names, or `storage` when
    given, or `study.db`); None when the folder has none (a grid of `medtrain -m`).

    Raises:
        ConfigError: `study.json` names an SQL URL whose password it does not keep, and no
            `storage` was given.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Study name was omitted ..."
    sweep_dir = Path(sweep_dir)
    pointer = sweep_dir / STUDY_FILE
    if pointer.is_file():
        where = json.loads(pointer.read_text())
        spec = storage or where["storage"]
        if ":***@" in spec:
            raise ConfigError(
                f"{pointer} names {spec}: give the URL with its password, "
                f"medtrain report sweep_dir={sweep_dir} storage=URL"
            )
        study_name = where.get("study", STUDY_NAME)
        return optuna.load_study(study_name=study_name, storage=open_storage(spec, sweep_dir))
    if (sweep_dir / "study.db").exists():
        return optuna.load_study(study_name=None, storage=open_storage(None, sweep_dir))
    return None


def search_of(study) -> dict | None:
    """What a study searches (`overrides`, `params`, `monitor`), or None before it is set.
    Studies of release 0.2 kept the three as separate attributes."""
    attrs = study.user_attrs
    if SEARCH in attrs:
        return attrs[SEARCH]
    if "params" in attrs:
        return {key: attrs.get(key) for key in ("overrides", "params", "monitor")}
    return None
