"""The help formatter of the commands: an option's default is shown only when it says something.

argparse's :class:`~argparse.ArgumentDefaultsHelpFormatter` appends ``(default: X)`` to every
option, so ``--data`` read "(default: $PNEUMOLENS_DATA, ...) (default: None)" and every switch
"(default: False)". :class:`DefaultsHelpFormatter` appends it only for a real value that the help
text does not state already.
"""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends `` (default: X)`` to an option's help unless X is None, False or suppressed, the
    help already names its default, or the argument is positional."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or not action.option_strings:
            return action.help
        lowered = text.lower()
        if "%(default)" in text or "(default" in lowered or "default:" in lowered:
            return action.help
        return f"{text} (default: %(default)s)"
