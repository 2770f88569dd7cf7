"""The CLI's argument parser: argparse, whose errors never repeat a value typed on the
command line."""
import argparse
import re
import sys
from typing import NoReturn


class QuietParser(argparse.ArgumentParser):
    """argparse, whose errors never repeat a value typed on the command line: one may be a
    secret in the wrong place (`servers list --admin-token SECRET`)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {_without_values(message)}\n")


_NOT_REPEATED = " (values are not repeated: one may be a secret; see --help)"
# "argument --interval: invalid float value: 'x'", "argument COMMAND: invalid choice: 'x'
# (choose from ...)": everything but the value
_INVALID_VALUE = re.compile(r"(?s)(?P<head>.*?invalid [\w ]*?(?:value|choice)): .*?"
                            r"(?P<tail>\s\(choose from .*\))?\Z")


def _without_values(message: str) -> str:
    """An argparse error message without the values the user typed."""
    if message.startswith("unrecognized arguments:"):
        names = [word.split("=")[0] for word in message.split(":", 1)[1].split()
                 if word.startswith("-")]
        return (f"unknown option {' '.join(names)}" if names else "unexpected value") \
            + _NOT_REPEATED
    match = _INVALID_VALUE.match(message)
    if match:
        return match.group("head") + _NOT_REPEATED + (match.group("tail") or "")
    return message
