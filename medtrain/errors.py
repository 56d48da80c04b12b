"""Errors that medtrain reports to the user as one clear message instead of a traceback."""


class MedtrainError(Exception):
    """Base class: the entry points print the message and exit with status 2."""


class ConfigError(MedtrainError):
    """A config key holds a value medtrain cannot use; the message names the key and what is valid."""


class LossMismatch(ConfigError):
    """The configured loss does not fit the task. Training refuses it; `medtrain check-data`
    reports it and still checks the data, which the loss does not read."""


class TrainingError(MedtrainError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


class DataError(MedtrainError):
    """A data file or its content is unusable; the message names the file (and row or key)."""


class DataRowsError(DataError):
    """Rows of an input table whose files or values are unusable, each named with its line, after
    the table itself (its header and columns) was read: `medtrain evaluate` exits with status 1
    for these, and 2 for a table it cannot read."""
