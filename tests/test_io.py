"""Atomic writes and strict JSON."""

import json

import pytest
import torch

from medtrain.errors import ConfigError
from medtrain.io import (
    atomic_write,
    file_in_the_way,
    load_checkpoint,
    refuse_file_in_the_way,
    save_checkpoint,
    save_json,
    staged_folder,
)


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "metrics.json"
    save_json(target, {"test/auc": 0.9})

    def explode(handle):
        handle.write('{"half": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert json.loads(target.read_text()) == {"test/auc": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_written_files_are_as_readable_as_the_umask_allows(tmp_path):
    """Results written through a temporary file get 0666 less the umask, as `open` would give,
    not the temporary's owner-only 0600 (colleagues and a service user read them)."""
    import os

    from medtrain.io import current_umask

    before = os.umask(0o022)  # the 0600 of a temporary file would pass under umask 077
    current_umask.cache_clear()
    try:
        save_json(tmp_path / "m.json", {"a": 1})
        save_checkpoint(tmp_path / "c.pt", {"w": torch.zeros(1)})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(before)
        current_umask.cache_clear()
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644
    for name in ("m.json", "c.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_json_is_strict_nan_becomes_null(tmp_path):
    save_json(tmp_path / "m.json", {"val/auc": float("nan"), "test/acc": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"val/auc": None, "test/acc": 0.5}


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    save_checkpoint(
        tmp_path / "c.pt", {"model": {"w": torch.ones(2)}, "epoch": 3, "history": [{"a": 1.0}]}
    )
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert loaded["epoch"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))


def test_staged_folder_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "evaluation"
    target.mkdir()
    (target / "old.csv").write_text("earlier")
    (target / "metrics.json").write_text("{}")
    with pytest.raises(RuntimeError), staged_folder(target) as staging:
        (staging / "metrics.json").write_text('{"new": 1}')
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]  # nothing left beside
    assert (target / "old.csv").read_text() == "earlier"  # as it was
    with staged_folder(target) as staging:
        (staging / "metrics.json").write_text('{"new": 1}')
        assert (target / "old.csv").is_file()  # still readable while the new one is written
    assert sorted(p.name for p in target.iterdir()) == ["metrics.json"]
    assert (target / "metrics.json").read_text() == '{"new": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]
    with staged_folder(tmp_path / "new" / "folder") as staging:  # parents made
        (staging / "a.txt").write_text("a")
    assert (tmp_path / "new" / "folder" / "a.txt").read_text() == "a"


def test_an_empty_or_truncated_checkpoint_is_named_as_such(tmp_path):
    """torch reports a cut-short checkpoint from inside its zip reader (or as a bare EOFError for
    an empty file): the error names the file and says what is wrong with it."""
    from medtrain.errors import DataError

    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(DataError) as caught:
        load_checkpoint(empty)
    assert str(caught.value) == f"{empty} is an empty file (0 bytes), not a checkpoint"
    whole = save_checkpoint(tmp_path / "whole.pt", {"model": {"w": torch.ones(100)}})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError) as caught:
        load_checkpoint(cut)
    assert str(caught.value).startswith(
        f"{cut} is truncated or damaged ({cut.stat().st_size} bytes): torch cannot read it ("
    )


def test_a_file_where_a_folder_must_be_is_named(tmp_path):
    """The nearest existing path on the way decides: a file there stops every write below it."""
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    assert file_in_the_way(afile / "sub" / "preds.csv") == afile
    assert file_in_the_way(afile) is None  # a file to be replaced: its folder is there
    assert file_in_the_way(afile, folder=True) == afile  # a folder to be written
    assert file_in_the_way(tmp_path / "new" / "preds.csv", folder=True) is None
    with pytest.raises(ConfigError) as err:
        refuse_file_in_the_way("output", afile / "preds.csv")
    assert str(err.value) == f"output={afile / 'preds.csv'}: {afile} is a file, not a folder"
    with pytest.raises(ConfigError) as err:
        refuse_file_in_the_way("masks", afile, folder=True)
    assert str(err.value) == f"masks={afile} is a file, not a folder"
    assert [p.name for p in tmp_path.iterdir()] == ["afile"] and afile.read_text() == "x\n"
