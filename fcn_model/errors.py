"""Exceptions of the model package: one root, subclasses that are also builtins."""

from __future__ import annotations


class FCNModelError(Exception):
    """Root of every error this package raises on purpose."""


class WeightsError(FCNModelError, ValueError):
    """A weights file cannot be loaded into the model asked for."""


class CheckpointError(FCNModelError, ValueError):
    """A file is not a readable checkpoint of this project."""
