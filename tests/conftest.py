import os
import sys
from pathlib import Path

from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent

# Hypothesis profiles. "default": derandomized (a fixed seed per test), so the default run
# sees the same examples every time and a red suite means a code change, not a new draw
# (issue 14: the render fuzz test failed now and then). "explore": fresh random examples,
# for hunting bugs; chosen by HYPOTHESIS_PROFILE=explore or by running `-m slow`.
settings.register_profile("default", deadline=None, derandomize=True, database=None,
                          print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.register_profile("ci", settings.get_profile("default"))   # the old name, kept
settings.register_profile("dev", settings.get_profile("default"))  # the old name, kept
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config) -> None:
    """`-m slow` (the long fuzzers) explores unless a profile was named explicitly."""
    marks = config.getoption("markexpr", "") or ""
    if "HYPOTHESIS_PROFILE" not in os.environ and "slow" in marks and "not slow" not in marks:
        settings.load_profile("explore")
