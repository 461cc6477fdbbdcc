"""What the `gud` commands share with the terminal: the argparse type of counts and progress
bars. Input: command-line text, counts. Output: parsed values, a (update, close) pair."""

from __future__ import annotations

import argparse
import sys


def integer_in(least: int, most: int | None = None):
    """argparse type: an integer >= `least` and <= `most` (None: no bound), said at the argument
    (outside them a count would fall back to a default or mean nothing, or fail later with
    another wording)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"must be at most {most}, got {value}")
        return value
    parse.__name__ = f"integer >= {least}" if most is None else f"integer in {least}..{most}"
    return parse


positive_int = integer_in(1)


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
