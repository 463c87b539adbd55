"""The argument parser every `python -m oyster_jax.*` command uses: long flags are spelled with underscores.

    parser = cli.ArgumentParser(prog="python -m oyster_jax.x", description=...)
    parser.add_argument("--judge_retries", type=int, default=3)   # "--judge-retries" raises ValueError here
    parser.parse_args(["--judge-retries", "5"])                   # the hyphen spelling still works

One spelling per flag in `--help` and in the docs (`--no_progress`, `--max_retries`); the hyphen spelling
of each (`--no-progress`) is accepted as a hidden alias, so older commands and scripts keep working.

Bad input is one line `error: ...` naming the file, field or tensor on stderr and exit status 2, never a
traceback (unless the command runs with `--debug`):

    with cli.bad_input_exits(args.debug):
        cfg, params = from_hf(args.hf_dir)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections.abc import Sequence

__all__ = ["ArgumentParser", "bad_input_exits", "BAD_INPUT", "EXIT_BAD_INPUT"]


def _hyphenated(option: str) -> bool:
    return option.startswith("--") and "-" in option[2:]


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` that defines long flags with underscores and reads their hyphen spellings too."""

    def add_argument(self, *args, **kwargs):
        bad = [a for a in args if isinstance(a, str) and _hyphenated(a)]
        if bad:
            raise ValueError(f"{bad}: spell long flags with underscores ({bad[0][:2] + bad[0][2:].replace('-', '_')})")
        return super().add_argument(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._underscored(args), namespace)

    def _underscored(self, args: list[str]) -> list[str]:
        """`--judge-retries[=v]` -> `--judge_retries[=v]` where that is one of our flags (never after `--`)."""
        known = {option for action in self._actions for option in action.option_strings}
        out = []
        for i, arg in enumerate(args):
            if arg == "--":
                out += args[i:]
                break
            flag, eq, value = arg.partition("=")
            if _hyphenated(flag) and flag not in known:
                spelled = "--" + flag[2:].replace("-", "_")
                if spelled in known:
                    arg = spelled + eq + value
            out.append(arg)
        return out


# What bad input raises throughout oyster_jax: the format errors (CheckpointFormatError, RecordError,
# ConfigError, DataError) all derive from ValueError; a missing file is FileNotFoundError.
BAD_INPUT = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError)

EXIT_BAD_INPUT = 2


@contextlib.contextmanager
def bad_input_exits(debug: bool = False, errors: tuple[type[BaseException], ...] = BAD_INPUT):
    """Turn `errors` raised inside the block into `error: <message>` and SystemExit(2)."""
    try:
        yield
    except errors as e:
        if debug:
            traceback.print_exception(e)
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {message or type(e).__name__}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
