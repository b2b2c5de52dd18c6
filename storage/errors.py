"""Errors the store raises. Every message says the cause and the fix: "cause; fix".

`StorageError` is the base; callers that only report errors catch it. Subclasses let callers
react: `NotFoundError` (an id or name that is not stored), `InvalidRecordError` (a record or
argument the store refuses, also a `ValueError`), `ConstraintError` (the database refused a write),
`SnapshotIntegrityError` (a snapshot no longer matches its content hash).
"""

from __future__ import annotations


class StorageError(Exception):
    """A store operation failed; `cause` says why, `fix` what to do about it."""

    def __init__(self, cause: str, fix: str) -> None:
        self.cause = cause
        self.fix = fix
        super().__init__(f"{cause}; {fix}")

    def __reduce__(self) -> tuple[type[StorageError], tuple[str, str]]:
        return type(self), (self.cause, self.fix)  # picklable: an import's worker process sends it back


class StoreUnavailableError(StorageError):
    """The database URL is malformed, or the database cannot be opened or reached."""


class MigrationError(StorageError):
    """The schema could not be brought to the version this code needs."""


class NotFoundError(StorageError, LookupError):
    """No stored object has the given id, prefix or name."""


class AmbiguousIdError(StorageError, LookupError):
    """An id prefix matches more than one stored object."""


class AlreadyExistsError(StorageError):
    """An object with the same identity is already stored with different content."""


class InvalidRecordError(StorageError, ValueError):
    """A record or argument breaks a rule of the schema (bad outcome, value out of range, ...)."""


class ConstraintError(StorageError):
    """The database refused a write (a constraint the checks before it did not catch)."""


class SnapshotIntegrityError(StorageError):
    """A snapshot's stored items no longer hash to its id, or items it lists are gone."""


__all__ = [
    "AlreadyExistsError",
    "AmbiguousIdError",
    "ConstraintError",
    "InvalidRecordError",
    "MigrationError",
    "NotFoundError",
    "SnapshotIntegrityError",
    "StorageError",
    "StoreUnavailableError",
]
