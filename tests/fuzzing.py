"""Settings shared by the fuzz tests (``test_*_fuzz.py``).

Each fuzz test states how many examples one run tries, so CI always fuzzes the same amount
(the counts are in the report of issue 10). ``HEADCOUNT_FUZZ_SCALE=10`` multiplies them all,
for a longer hunt on a developer's machine; failures found then are kept as ``@example``s.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE_ENV = "HEADCOUNT_FUZZ_SCALE"


def fuzz(examples: int) -> settings:
    """``examples`` tries (times the scale), no deadline: the machine is shared, and a slow
    example is not what these tests look for."""
    scale = float(os.environ.get(SCALE_ENV) or 1)
    return settings(
        max_examples=max(1, round(examples * scale)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            # capsys or tmp_path are reused across examples on purpose: each example reads
            # what it wrote, or works in a folder of its own.
            HealthCheck.function_scoped_fixture,
        ],
    )
