"""Exceptions with actionable one-line messages.

Every error a user can cause (a bad file, a missing folder, a foreign checkpoint) is a
:class:`PneumoLensError`. The CLI prints its message on one line and exits with code 2; the
service maps each subclass to an HTTP status.
"""

from __future__ import annotations


class PneumoLensError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class InvalidImageError(PneumoLensError):
    """A file that cannot be read as an X-ray: unreadable, truncated, empty, wrong mode, too big."""


class ImageTooLargeError(InvalidImageError):
    """An image whose pixel count exceeds the decompression-bomb limit."""


class UnsupportedDicomError(InvalidImageError):
    """A DICOM file we cannot turn into a grayscale image (no pixels, colour, multi-frame)."""


class DatasetError(PneumoLensError):
    """A dataset folder that does not follow the Kaggle layout (missing split or class folder)."""


class CheckpointError(PneumoLensError):
    """A checkpoint file that is missing, corrupt, or not a PneumoLens checkpoint."""


class ConfigError(PneumoLensError):
    """An invalid configuration value or an unknown key."""


class SettingError(ConfigError, ValueError):
    """A method setting of the wrong type or out of its range (``lime:n_samples=0``).

    Also a ValueError, so code that already turned a method's ValueError into a one-line
    refusal keeps doing so.
    """
