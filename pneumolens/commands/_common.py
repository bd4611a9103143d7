"""What several commands share: where the command line looks for the dataset by default.

The library (:func:`pneumolens.data.resolve_data_root`) knows only an explicit folder,
``$PNEUMOLENS_DATA`` and ``./chest_xray``. The development workspace keeps the dataset in
``../shared/data/chest_xray``; that location is a default of the command line only, named here once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from ..data import resolve_data_root

#: The development workspace's dataset, relative to the checkout (or to the working folder).
WORKSPACE_DATA = Path("..") / "shared" / "data" / "chest_xray"

#: The checkout holding this package (``pneumolens/commands/_common.py`` → the repository root).
CHECKOUT = Path(__file__).resolve().parents[2]

#: Where ``--data`` defaults to, as the commands' help says it.
DATA_DEFAULT_HELP = f"default: $PNEUMOLENS_DATA, else {WORKSPACE_DATA.as_posix()}, else ./chest_xray"

#: ``--data`` help of the commands that read the dataset.
DATA_HELP = f"dataset root ({DATA_DEFAULT_HELP})"


def data_fallbacks() -> tuple[Path, ...]:
    """Folders tried after ``--data`` and ``$PNEUMOLENS_DATA``, in order.

    The workspace's dataset beside the checkout, then beside the working folder, then ``./chest_xray``.
    """
    near = [Path(os.path.normpath(base / WORKSPACE_DATA)) for base in (CHECKOUT, Path.cwd())]
    return (*dict.fromkeys(near), Path("chest_xray"))


def data_root(data: str | Path | None) -> Path:
    """The dataset root the command line uses: ``--data``, else ``$PNEUMOLENS_DATA``, else :func:`data_fallbacks`.

    Raises:
        DatasetError: the chosen folder does not exist, or none of the defaults does.
    """
    return resolve_data_root(data, fallbacks=data_fallbacks())


def integer_at_least(minimum: int, what: str = "") -> Callable[[str], int]:
    """An argparse ``type``: a whole number ``>= minimum``; ``what`` names it in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number{' of ' + what if what else ''}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}{' (' + what + ')' if what else ''}")
        return value

    return parse


def probability(text: str) -> float:
    """An argparse ``type``: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value
