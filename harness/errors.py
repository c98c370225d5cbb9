"""Exceptions split by who is to blame: the user's input or the lab's machinery."""


class UserError(Exception):
    """Bad input: a lab file, a flag, a revision. Exit code 2 with a one-line message."""


class LabError(Exception):
    """The lab itself failed: a tool is missing, a download broke, the disk is full."""


class ConfigError(UserError):
    """A lab file is wrong; the message names the file, the key and what was expected."""

    def __init__(self, path: str, key: str, expected: str) -> None:
        super().__init__(f"{path}: {key}: {expected}")
        self.path = path
        self.key = key
        self.expected = expected

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # raised on a worker, it reaches the coordinator pickled
        return ConfigError, (self.path, self.key, self.expected)
