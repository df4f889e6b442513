"""The errors that mean a user's mistake, not a bug: the CLI reports them as one line and exits 2 (anything else is
reported as an internal error, exit 1, with the traceback in a log file)."""


class InputError(ValueError):
    """A problem with what the user gave (an argument, a file, a row, a query), reported as one line naming it.

    A ValueError, so code that catches ValueError (the app's pages) still catches it; raise a plain ValueError (or an
    AssertionError) only for what cannot happen without a bug."""


class CatalogError(RuntimeError):
    """The catalog cannot be read as asked (a newer schema, a lock held too long, ...)."""


class ArtefactError(CatalogError, LookupError):
    """An artefact reference (label or hash prefix) that names none, or several."""
