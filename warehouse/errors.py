"""The warehouse's own errors (user-facing: the CLI reports them as one line)."""


class CatalogError(RuntimeError):
    """The catalog cannot be read as asked (a newer schema, a lock held too long, ...)."""


class ArtefactError(CatalogError, LookupError):
    """An artefact reference (label or hash prefix) that names none, or several."""
