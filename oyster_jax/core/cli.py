"""The command-line convention for bad input: one line `error: ...` naming the file, field or tensor on
stderr and exit status 2, never a traceback (unless the command runs with `--debug`).

    with bad_input_exits(args.debug):
        cfg, params = from_hf(args.hf_dir)
"""

from __future__ import annotations

import contextlib
import sys
import traceback

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
