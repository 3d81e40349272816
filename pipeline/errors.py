"""Exceptions of the pipeline: one root, subclasses that are also builtins."""

from __future__ import annotations

from os import PathLike


class PipelineError(Exception):
    """Root of every error the pipeline raises on purpose."""


class SceneError(PipelineError, ValueError):
    """A scene cannot be segmented: the message names the file and the reason."""

    def __init__(self, path: str | PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class OutputError(PipelineError, OSError):
    """An output location is unusable (bad path, or not this pipeline's output)."""


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop (SIGTERM, as ``ray job stop`` sends, or SIGINT)."""

    def __init__(self, signal_name: str = "SIGINT") -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
