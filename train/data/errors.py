"""Errors raised by the dataset readers."""


class DataError(ValueError):
    """A dataset file is missing, or holds something other than what its format promises."""


class DataFileNotFound(DataError, FileNotFoundError):
    """No dataset file where one was looked for (the message says where, and where to get one)."""
