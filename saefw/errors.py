"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class SaefwError(Exception):
    """A problem with the user's input (config value, path, data) that a one-line message explains."""


def unset_value(key: str, needed_by: str | None = None) -> SaefwError:
    """The error for a mandatory config value (``???``) still unset when it is needed: it names the dotted key
    (``source.path``), what needs it, and how to set it."""
    who = f"{needed_by} needs it" if needed_by else "it is mandatory"
    return SaefwError(f"{key} is not set (??? in the config: {who}); set it on the command line: {key}=<value>")
