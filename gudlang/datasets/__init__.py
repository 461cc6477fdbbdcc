"""Bundled data (digits.npz, see README.md) and the file readers of `gudlang.data`."""
