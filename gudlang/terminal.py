"""What the `gud` commands share with the terminal: the argparse type of counts and progress
bars. Input: command-line text, counts. Output: parsed values, a (update, close) pair."""

from __future__ import annotations

import argparse
import sys


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (0 would otherwise fall back to a default or mean nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def progress(what: str, total: int, quiet: bool = False, unit: str = "image"):
    """(update, close): a tqdm bar on a terminal, called with (done, total) (a total other than
    the one given replaces it); update is None elsewhere or when quiet."""
    if quiet or not sys.stderr.isatty():
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, desc=what, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return update, bar.close
