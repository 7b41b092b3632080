"""Errors raised for bad input files.

Every error names the file and says what was wrong with it, so that the napari reader can show
one clear message instead of a traceback, and a CLI user knows which of many files to fix.
"""

from __future__ import annotations

from pathlib import Path


class PoseFileError(ValueError):
    """A file could not be read or written as the format it claims to be.

    Attributes:
        path: The offending file.
        problem: What was wrong, in words a user can act on.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class VideoFileError(PoseFileError):
    """A video (or image sequence) cannot be opened or a frame cannot be decoded."""


class MissingVideoError(PoseFileError):
    """A labels file refers to a video that was not found where it says nor near the labels."""
