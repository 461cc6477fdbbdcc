"""What the `gud` commands share with the terminal: the argparse type of counts and progress
bars. Input: command-line text, counts. Output: parsed values, a (update, close) pair."""

from __future__ import annotations

import argparse
import sys


def integer_at_least(least: int):
    """argparse type: an integer >= `least` (below it a count would fall back to a default or mean
    nothing, or fail later with another wording)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        return value
    parse.__name__ = f"integer >= {least}"
    return parse


positive_int = integer_at_least(1)


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
