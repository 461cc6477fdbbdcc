"""Assertions on GudErrors that the tests of several modules share."""

from contextlib import contextmanager

import pytest

from gudlang.diagnostics import GudError


@contextmanager
def fails(code: str, *fragments: str):
    """Expect a GudError with `code` whose message (or help) contains every fragment."""
    with pytest.raises(GudError) as info:
        yield info
    d = info.value.diagnostics[0]
    assert d.code == code, f"expected {code}, got {d.code}: {d.message}"
    text = d.message + " " + (d.help or "")
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"


def refused(code: str, phrase: str, call, *args, **kwargs) -> GudError:
    """call(*args, **kwargs) raises GudError `code` whose message contains `phrase`."""
    with pytest.raises(GudError) as err:
        call(*args, **kwargs)
    assert [d.code for d in err.value.diagnostics] == [code], str(err.value)
    assert phrase in str(err.value), str(err.value)
    return err.value
