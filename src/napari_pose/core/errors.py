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

    def __reduce__(self) -> tuple:
        # Rebuilt from (path, problem), not from the formatted message: errors raised on a
        # dask worker (``nn.scaleout``) reach the client pickled.
        return type(self), (self.path, self.problem)


class VideoFileError(PoseFileError):
    """A video (or image sequence) cannot be opened or a frame cannot be decoded."""


class MissingVideoError(PoseFileError):
    """A labels file refers to a video that was not found where it says nor near the labels."""


class UnsafeFileError(PoseFileError):
    """A file holds data that would run code when read (pickled Python objects).

    Distinct from other bad files because it is refused loudly even where unreadable files are
    quietly "not ours" (format detection): the user must learn why such a file did not open.
    """


class PoseWarning(UserWarning):
    """A result is not what the user may assume: points or frames left out, frames skipped.

    The CLI prints these as one ``warning:`` line each; napari shows them as notifications.
    """
