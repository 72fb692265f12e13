"""Errors that are the user's to fix: the CLI prints them on one line and exits 2."""


class UserError(Exception):
    """Bad input: unknown name, malformed budget, missing or corrupt file. The message says the fix."""


class DatasetError(UserError):
    """A dataset file is missing or unreadable."""
