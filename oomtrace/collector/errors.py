"""Exceptions the collector raises. The servicers map each to a gRPC status."""

from __future__ import annotations


class CollectorError(Exception):
    """Base of every error the collector raises on purpose."""


class InvalidQueryError(CollectorError):
    """A query's arguments cannot be used (bad page token, unknown grouping).
    Maps to INVALID_ARGUMENT."""


class NotFoundError(CollectorError):
    """No record has the requested id. Maps to NOT_FOUND."""

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(f"no record with id {event_id!r}")


class StoreError(CollectorError):
    """The store cannot be opened or migrated (wrong file, newer schema)."""
