"""Errors that medtrain reports to the user as one clear message instead of a traceback."""


class MedtrainError(Exception):
    """Base class: the entry points print the message and exit with status 2."""

    def __init__(self, *args: object):
        # Raised in a data loader's worker process, torch raises it again in the main one with
        # the worker's whole traceback as its message ("Caught ConfigError in DataLoader worker
        # process 0. Original Traceback ..."): the message is what the worker said.
        if len(args) == 1 and isinstance(args[0], str):
            args = (unwrapped(args[0], type(self)),)
        super().__init__(*args)


def unwrapped(message: str, kind: type) -> str:
    """The original message of an error that torch's `ExceptionWrapper` carried out of a worker
    (its last line, `<module>.<Class>: <message>`, and any lines after it); `message` itself
    otherwise."""
    if not (message.startswith(f"Caught {kind.__name__} ") and "Original Traceback" in message):
        return message
    marker = f"{kind.__module__}.{kind.__qualname__}: "
    start = message.rfind(marker)
    if start < 0:
        return message
    return message[start + len(marker) :].rstrip("\n")


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
