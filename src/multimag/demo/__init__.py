"""The synthetic demo cohort (real pyramidal SVS slides with annotations) and its SVS writer.

See docs/demo.md for what the cohort holds and the files it writes.
"""

from multimag.demo.cohort import make_demo_cohort

__all__ = ["make_demo_cohort"]
