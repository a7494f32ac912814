"""``python -m multimag.cli``: the same command line as ``multimag``."""

import sys

from multimag.cli import main

sys.exit(main())
