"""``pneumolens`` command line: parses arguments and calls the library, nothing more.

Each subcommand lives in ``pneumolens/commands/<name>.py`` and exposes
``add_parser(subparsers)``; its handler returns an exit code. Every
:class:`~pneumolens.errors.PneumoLensError` becomes one line on stderr and exit code 2; that
line and every log message have their control characters escaped (:mod:`pneumolens.printable`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import PneumoLensError
from .outputs import check_output_dir
from .printable import PrintableFormatter, printable

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("demo", "train", "cv", "evaluate", "predict", "explain", "explain_eval", "audit", "ood_eval", "info", "export", "serve")
#: Commands whose --out is a folder, checked before any work (predict and export check their output file).
FOLDER_OUTPUTS = ("demo", "train", "cv", "evaluate", "explain", "explain-eval", "audit", "ood-eval")


class OneLineErrorParser(argparse.ArgumentParser):
    """Argument mistakes as one line naming the option and the reason, and a pointer to ``--help``
    (exit code 2), instead of the whole usage block before it; subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="pneumolens",
        description=(
            "Detect pneumonia in paediatric chest X-rays with a CNN-LSTM, and show why "
            "(Grad-CAM, LIME, SHAP, Integrated Gradients, occlusion). Research and education "
            "use only: not a medical device."
        ),
        epilog="Run `pneumolens COMMAND --help` for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"pneumolens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log PneumoLens's debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(f"commands.{name}"):
                continue  # a command not built yet
            raise
        module.add_parser(sub)
    return parser


#: Libraries whose debug and info messages drown the run's own under ``-v`` (matplotlib's font
#: look-ups, PIL's chunk reads...): kept at WARNING whatever the verbosity.
NOISY_LOGGERS = ("matplotlib", "PIL", "urllib3", "fsspec", "asyncio", "filelock", "httpx", "httpcore",
                 "python_multipart", "multipart", "h5py", "numexpr", "git")


def configure_logging(verbose: bool) -> None:
    """Messages on stderr, control characters escaped: INFO and up; ``verbose`` adds PneumoLens's
    own DEBUG messages (not every library's). :data:`NOISY_LOGGERS` stay at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(levelname)s: %(message)s"))  # file names may hold control characters
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("pneumolens").setLevel(logging.DEBUG if verbose else logging.NOTSET)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").propagate = False  # Lightning prints its own INFO lines


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        if args.command in FOLDER_OUTPUTS and getattr(args, "out", None) is not None:
            check_output_dir(Path(args.out))
        return int(args.func(args) or 0)
    except PneumoLensError as exc:
        print(f"pneumolens {args.command}: error: {printable(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"pneumolens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
