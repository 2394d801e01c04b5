"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class SaefwError(Exception):
    """A problem with the user's input (config value, path, data) that a one-line message explains."""
