"""The `tokometer` command: parses arguments and runs one of the commands (commands.py).

The parser is built by walking the command declarations; a library error becomes one line
on stderr and exit code 2, a file that cannot be written exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..analytics.cells import visible
from ..errors import TokometerError
from ..ledger import is_store_error
from .commands import COMMANDS, serve
from .spec import CONFIG, Command, OneOf


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run is None:  # a group named without one of its commands
        args.parser.print_help()
        return 2
    if sys.stdout is None and args.run is not serve:  # closed: a key shown once would be lost
        print("tokometer: standard output is closed", file=sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except TokometerError as e:
        # the message may quote what was typed or stored: escaped, it cannot drive the terminal
        print(f"tokometer: {visible(e.message)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file to write that cannot be: the user's to fix, not a traceback
        print(f"tokometer: {visible(str(e))}", file=sys.stderr)
        return 1
    except Exception as e:
        if not is_store_error(e):
            raise
        # e.g. read-only to this user, locked past the timeout, the database server gone
        print(f"tokometer: the store failed: {visible(str(e))}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokometer",
        description="A metering gateway for LLM tokens: every request priced, attributed and "
                    "recorded.")
    parser.set_defaults(run=None, parser=parser)
    groups = {"": parser.add_subparsers(metavar="COMMAND")}
    for command in COMMANDS:
        *above, name = command.words.split()
        sub = groups[" ".join(above)].add_parser(
            name, help=command.help, description=command.about or command.help)
        sub.set_defaults(run=command.run, parser=sub)
        if command.run is None:
            groups[command.words] = sub.add_subparsers(metavar="ACTION")
        _add_args(sub, command)
    return parser


def _add_args(parser: argparse.ArgumentParser, command: Command) -> None:
    for spec in command.args:
        if isinstance(spec, OneOf):
            group = parser.add_mutually_exclusive_group(required=True)
            for one in spec.args:
                group.add_argument(*one.flags, **one.options)
        else:
            parser.add_argument(*spec.flags, **spec.options)
    if command.config and command.run is not None:
        parser.add_argument(*CONFIG.flags, **CONFIG.options)
