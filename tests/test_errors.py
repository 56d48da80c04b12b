"""medtrain's errors: one clear message, also when raised in a data loader's worker process."""

import pytest
from torch.utils.data import DataLoader, Dataset

from medtrain.errors import ConfigError, DataError, unwrapped


class Refusing(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise DataError("cases.csv: line 3: images/a.png: the file is empty\nand a second line")


def test_an_error_raised_in_a_loader_worker_keeps_its_own_message():
    """torch raises it again in the main process with the worker's traceback as its message
    ("Caught DataError in DataLoader worker process 0. Original Traceback ...")."""
    with pytest.raises(DataError) as err:
        list(DataLoader(Refusing(), num_workers=1))
    assert str(err.value) == "cases.csv: line 3: images/a.png: the file is empty\nand a second line"


def test_other_messages_are_left_as_they_are():
    assert (
        str(ConfigError("Caught nothing: optimizer.lr='x'")) == "Caught nothing: optimizer.lr='x'"
    )
    wrapped = "Caught ConfigError in DataLoader worker process 1.\nOriginal Traceback: no marker"
    assert unwrapped(wrapped, ConfigError) == wrapped
