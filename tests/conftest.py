"""Session-wide test setup: a private cache, so that tests never read or write the user's
~/.cache/gudlang (fitted statistics, decoded image folders)."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    if "GUDLANG_CACHE" in os.environ:  # a cache the caller chose (CI may point it somewhere)
        yield
        return
    os.environ["GUDLANG_CACHE"] = str(tmp_path_factory.mktemp("gudlang-cache"))
    yield
    del os.environ["GUDLANG_CACHE"]


@pytest.fixture
def fresh_image_cache(tmp_path_factory, monkeypatch):
    """A fresh, empty cache root for one test (decoded image folders are cached)."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("GUDLANG_CACHE", str(root))
    return root


# Property tests draw the same examples on every run (CI stays reproducible); explore new ones
# with HYPOTHESIS_PROFILE=explore.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("repeatable", derandomize=True)
_hypothesis_settings.register_profile("explore", derandomize=False)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
