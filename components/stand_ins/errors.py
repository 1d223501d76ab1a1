"""The errors of the local stand-ins; each message says what is wrong and what to do."""

from __future__ import annotations


class RegistryError(ValueError):
    """An upload or lookup in the local registry was refused."""


class EndpointError(RuntimeError):
    """A local deploy, predict or undeploy failed."""


class EndpointInputError(EndpointError):
    """The caller named an unknown endpoint or gave a malformed instances file."""


class BatchPredictError(RuntimeError):
    """A batch prediction could not run or finish."""


class BatchInputError(BatchPredictError):
    """The batch inputs or settings are unusable as given (missing file, unknown field, ...)."""
