"""Golden files: expected outputs stored next to their inputs under tests/golden/.

Input: the path of an expected-output file and the text a test produced.
Output: nothing; `check_golden` fails the test with a diff when they differ.
One switch updates every golden file: run the tests with GUD_UPDATE_GOLDEN=1, which writes
the actual text instead of comparing, then review the change with `git diff`.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

UPDATE = os.environ.get("GUD_UPDATE_GOLDEN") == "1"


def check_golden(path: Path, actual: str) -> None:
    """Assert `actual` equals the contents of `path` (or write it when updating)."""
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))  # bytes: no newline translation
        return
    assert path.exists(), f"{path} is missing; run with GUD_UPDATE_GOLDEN=1 to create it"
    expected = path.read_bytes().decode("utf-8")
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(keepends=True),
                                            actual.splitlines(keepends=True),
                                            f"{path.name} (expected)", "actual"))
        raise AssertionError(f"{path} differs (GUD_UPDATE_GOLDEN=1 to accept):\n{diff}")
