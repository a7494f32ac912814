"""``multimag``: one subcommand per workflow rule.

Exit code 0 on success; on a failure the user can fix, exit 2 with one line on stderr
naming the slide, the file and the fix (no traceback; ``MULTIMAG_DEBUG=1`` shows it).
"""

from __future__ import annotations

import os
import sys
import warnings

from multimag.cli.arguments import build_parser
from multimag.errors import MultimagError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"{cat.__name__}: {msg}\n"
    try:
        return args.func(args)
    except MultimagError as exc:
        if os.environ.get("MULTIMAG_DEBUG"):
            raise
        print(f"multimag {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"multimag {args.command}: interrupted", file=sys.stderr)
        return 130
