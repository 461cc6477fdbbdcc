"""CIFAR-10's python version (cifar-10-batches-py): read exactly, and never run a pickle's code.

The batches are pickles of {b"batch_label", b"labels", b"data", b"filenames"}; the fakes
here are written opcode by opcode as Python 2's cPickle wrote the real ones (a dict of str,
the pixels as a numpy array rebuilt from a str of bytes, the labels as a list of ints).
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from gudlang.data import dataset
from gudlang.datasets import readers
from test_data import _cifar_batch, _levels, _write_cifar, fails


def _py2_str(b: bytes) -> bytes:
    """A Python 2 str, which unpickles to bytes with encoding="bytes"."""
    if len(b) < 256:
        return pickle.SHORT_BINSTRING + bytes([len(b)]) + b
    return pickle.BINSTRING + struct.pack("<i", len(b)) + b


def _py2_int(i: int) -> bytes:
    return pickle.BININT1 + bytes([i]) if 0 <= i < 256 else pickle.BININT + struct.pack("<i", i)


def _py2_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _py2_array(data: np.ndarray, module: str = "numpy.core.multiarray") -> bytes:
    """A uint8 2-D array as numpy pickles it: _reconstruct(ndarray, (0,), "b"), then its state
    (version, shape, dtype, fortran order, raw bytes)."""
    dtype = (_py2_global("numpy", "dtype") + _py2_str(b"u1") + _py2_int(0) + _py2_int(1)
             + pickle.TUPLE3 + pickle.REDUCE + pickle.MARK + _py2_int(3) + _py2_str(b"|")
             + pickle.NONE * 3 + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + pickle.TUPLE
             + pickle.BUILD)
    return (_py2_global(module, "_reconstruct") + _py2_global("numpy", "ndarray")
            + _py2_int(0) + pickle.TUPLE1 + _py2_str(b"b") + pickle.TUPLE3 + pickle.REDUCE
            + pickle.MARK + _py2_int(1) + _py2_int(data.shape[0]) + _py2_int(data.shape[1])
            + pickle.TUPLE2 + dtype + pickle.NEWFALSE + _py2_str(data.tobytes()) + pickle.TUPLE
            + pickle.BUILD)


def _py2_batch(records: np.ndarray, module: str = "numpy.core.multiarray") -> bytes:
    """A CIFAR-10 python batch as Python 2's cPickle (protocol 2) wrote the real ones."""
    def py2_list(items: bytes) -> bytes:
        return pickle.EMPTY_LIST + pickle.MARK + items + pickle.APPENDS

    labels = py2_list(b"".join(_py2_int(int(v)) for v in records[:, 0]))
    names = py2_list(b"".join(_py2_str(b"img_%05d.png" % i) for i in range(len(records))))
    return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK
            + _py2_str(b"batch_label") + _py2_str(b"training batch 1 of 5")
            + _py2_str(b"labels") + labels + _py2_str(b"data")
            + _py2_array(records[:, 1:], module) + _py2_str(b"filenames") + names
            + pickle.SETITEMS + pickle.STOP)


def _write_cifar_python(folder, sizes=(2, 2, 2, 2, 2, 3), seed=0, module="numpy.core.multiarray"):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = [_cifar_batch(n, seed + i) for i, n in enumerate(sizes)]
    for name, b in zip(names, batches):
        (folder / name).write_bytes(_py2_batch(b, module))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"]}, 2))
    return batches


def _planes(batches) -> np.ndarray:
    """The float images of records (label byte, then R, G, B planes), in record order."""
    pixels = np.concatenate([b[:, 1:] for b in batches])
    return _levels(pixels.reshape(-1, 3, 32, 32), 255)


@pytest.mark.parametrize("subdir", ["cifar-10-batches-py", ""])
@pytest.mark.parametrize("module", ["numpy.core.multiarray", "numpy._core.multiarray"])
def test_cifar10_python_batches_are_read_as_rgb_planes(tmp_path, subdir, module):
    batches = _write_cifar_python(tmp_path / subdir if subdir else tmp_path, module=module)
    d = dataset("cifar10", tmp_path)
    assert d.train.shape == (10, 3, 32, 32) and d.test.shape == (3, 3, 32, 32)
    record = batches[1][0]  # the third training image: label, then R, G, B rows of 32
    for c in range(3):
        for y, x in ((0, 0), (5, 17), (31, 31)):
            assert d.train[2, c, y, x] == _levels(record[1 + c * 1024 + y * 32 + x], 255)
    np.testing.assert_array_equal(d.train, _planes(batches[:5]))
    np.testing.assert_array_equal(d.test, _planes(batches[5:]))
    assert (d.name, d.levels, d.params["split"]) == ("cifar10", 256, "official")


def test_cifar10_python_and_binary_versions_give_the_same_dataset(tmp_path):
    binary = _write_cifar(tmp_path / "a" / "cifar-10-batches-bin")
    python = _write_cifar_python(tmp_path / "b" / "cifar-10-batches-py")
    assert all(np.array_equal(x, y) for x, y in zip(binary, python))
    a, b = dataset("cifar10", tmp_path / "a"), dataset("cifar10", tmp_path / "b")
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.test, b.test)
    assert a.fingerprint == b.fingerprint


def test_cifar10_binary_version_is_read_when_both_are_complete(tmp_path):
    binary = _write_cifar(tmp_path / "cifar-10-batches-bin")
    python = _write_cifar_python(tmp_path / "cifar-10-batches-py", seed=10)
    np.testing.assert_array_equal(dataset("cifar10", tmp_path).test, _planes(binary[5:]))
    (tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    np.testing.assert_array_equal(dataset("cifar10", tmp_path).test, _planes(python[5:]))


def _repickled(records: np.ndarray, protocol: int, data=None) -> bytes:
    """A batch as Python 3 pickles it (protocol 2: bytes through _codecs.encode; 5: arrays
    through numpy's _frombuffer)."""
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": records[:, 0].tolist(),
             b"data": records[:, 1:].copy() if data is None else data,
             b"filenames": [b"a.png"] * len(records)}
    return pickle.dumps(batch, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar10_python_batch_repickled_by_python_3_is_read(tmp_path, protocol):
    batches = _write_cifar_python(tmp_path)
    for i, name in ((1, "data_batch_2"), (5, "test_batch")):
        (tmp_path / name).write_bytes(_repickled(batches[i], protocol))
    d = dataset("cifar10", tmp_path)
    np.testing.assert_array_equal(d.train, _planes(batches[:5]))
    np.testing.assert_array_equal(d.test, _planes([batches[5]]))


@pytest.mark.parametrize("protocol", [2, 5])
def test_empty_cifar_python_batch_repickled_by_python_3_fails_as_empty(tmp_path, protocol):
    _write_cifar_python(tmp_path)
    empty = np.zeros((0, 3073), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(_repickled(empty, protocol))
    with fails("E407", "test_batch", "holds no images"):
        dataset("cifar10", tmp_path)


@pytest.mark.parametrize("order", ["C", "F"])
def test_cifar_python_batch_at_protocol_5_keeps_its_values(tmp_path, order):
    records = _write_cifar_python(tmp_path)[5]
    data = np.asarray(records[:, 1:], order=order)
    readonly = np.frombuffer(data.tobytes(order="A"), np.uint8).reshape(data.shape, order=order)
    for array in (data, readonly):  # pickled as a bytearray, and as bytes
        (tmp_path / "test_batch").write_bytes(_repickled(records, 5, array))
        np.testing.assert_array_equal(dataset("cifar10", tmp_path).test, _planes([records]))


@pytest.mark.parametrize("old, new, refusal", [
    (b"latin1", b"utf_16", "unsupported bytes encoding"),  # _codecs.encode: latin1 only
    (b"M\x00\x0c\x86", b"M\x00\x06\x86", "array data of 9216 bytes"),  # _frombuffer: shape
    (b"\x8c\x01C\x94t", b"\x8c\x01X\x94t", "unsupported array data"),  # _frombuffer: order
], ids=["encoding", "frombuffer-shape", "frombuffer-order"])
def test_cifar_python_batch_calls_are_checked(tmp_path, old, new, refusal):
    records = _write_cifar_python(tmp_path)[5]
    raw = _repickled(records, 2 if old == b"latin1" else 5)
    assert old in raw
    (tmp_path / "test_batch").write_bytes(raw.replace(old, new))
    with fails("E402", "test_batch", "cannot be unpickled", refusal):
        dataset("cifar10", tmp_path)


class _Call:
    """Pickles as a call of `function(*args)`, which unpickling would run."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("payload, name", [
    (lambda marker: _Call(os.system, f"touch {marker}"), "system"),
    (lambda marker: _Call(eval, f"open({str(marker)!r}, 'w')"), ".eval'"),
    (lambda marker: _Call(open, str(marker), "w"), "open"),
], ids=["os.system", "eval", "open"])
def test_cifar10_python_batch_with_another_global_is_refused_without_running_it(
        tmp_path, payload, name, protocol):
    _write_cifar_python(tmp_path)
    marker = tmp_path / "MARKER"
    batch = {"labels": [0, 1], "data": payload(marker)}  # str keys: no global before it
    evil = pickle.dumps(batch, protocol=protocol)
    (tmp_path / "data_batch_2").write_bytes(evil)
    with fails("E402", "data_batch_2", "not a CIFAR-10 python batch", "refers to", name,
               "not loaded"):
        dataset("cifar10", tmp_path)
    assert not marker.exists()
    if name == "open":  # the payload is live: a plain unpickler runs it
        pickle.loads(evil)
        assert marker.exists()


def _pickled(obj) -> bytes:
    return pickle.dumps(obj, protocol=4)


_GOOD_DATA = np.zeros((2, 3072), dtype=np.uint8)


@pytest.mark.parametrize("content, fragments", [
    (_pickled([1, 2, 3]), ["holds a value of type list, not a dict"]),
    (_pickled({b"data": _GOOD_DATA}), ["no b'labels' entry", "its keys: b'data'"]),
    (_pickled({"data": _GOOD_DATA, "labels": [1, 2]}), ["no b'data' or b'labels'", "'data'"]),
    (_pickled({b"data": b"\0" * 6144, b"labels": [1, 2]}), ["b'data' is a value of type bytes"]),
    (_pickled({b"data": _GOOD_DATA.astype(np.float64), b"labels": [1, 2]}),
     ["float64", "(2, 3072)", "not uint8"]),
    (_pickled({b"data": _GOOD_DATA.reshape(2, 3, 32, 32), b"labels": [1, 2]}),
     ["(2, 3, 32, 32)", "(N, 3072)"]),
    (_pickled({b"data": _GOOD_DATA[:, :1024], b"labels": [1, 2]}), ["(2, 1024)"]),
    (_pickled({b"data": _GOOD_DATA, b"labels": [1]}), ["2 images but 1 labels"]),
    (_pickled({b"data": _GOOD_DATA, b"labels": [1.0, 2.0]}), ["not a list of integers", "float"]),
    (_pickled({b"data": _GOOD_DATA, b"labels": (1, 2)}), ["not a list of integers", "tuple"]),
    (_pickled({b"data": _GOOD_DATA, b"labels": [True, False]}), ["not a list of integers"]),
    (_pickled({b"data": _GOOD_DATA, b"labels": [3, 10]}), ["labels beyond 0..9"]),
    (_cifar_batch(2, 0).tobytes(), ["not a pickle"]),  # a binary batch under a python name
    (b"", ["truncated or not a pickle"]),
])
def test_cifar10_python_batch_of_another_structure_fails(tmp_path, content, fragments):
    _write_cifar_python(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    with fails("E402", "test_batch", "not a CIFAR-10 python batch", *fragments):
        dataset("cifar10", tmp_path)


@pytest.mark.parametrize("cut", [1, 100, 3000])
def test_truncated_cifar_python_batch_fails(tmp_path, cut):
    _write_cifar_python(tmp_path)
    path = tmp_path / "data_batch_5"
    path.write_bytes(path.read_bytes()[:-cut])
    with fails("E402", "data_batch_5", "truncated"):
        dataset("cifar10", tmp_path)


@pytest.mark.parametrize("opcode, width", [(b"T", "<i"), (b"\x8e", "<Q")])
def test_cifar_python_batch_declaring_more_bytes_than_it_holds_fails_before_allocating(
        tmp_path, opcode, width):
    # A string of 2 GiB or 2^60 bytes, of which 3 are present: the unpickler would allocate it.
    _write_cifar_python(tmp_path)
    length = 2 ** 31 - 1 if width == "<i" else 2 ** 60
    header = b"\x80\x04" if opcode == b"\x8e" else b"\x80\x02"
    (tmp_path / "test_batch").write_bytes(header + opcode + struct.pack(width, length) + b"abc.")
    with fails("E402", "test_batch", "truncated or not a pickle", str(length)):
        dataset("cifar10", tmp_path)


@pytest.mark.parametrize("call, refusal", [
    # _reconstruct asked for a 10^15-byte array instead of numpy's empty one
    (_py2_global("numpy.core.multiarray", "_reconstruct") + _py2_global("numpy", "ndarray")
     + _py2_int(100_000) * 3 + pickle.TUPLE3 + _py2_str(b"b") + pickle.TUPLE3 + pickle.REDUCE,
     "unexpected array reconstruction"),
    # numpy.ndarray called directly with that shape
    (_py2_global("numpy", "ndarray") + _py2_int(100_000) * 3 + pickle.TUPLE3 + pickle.TUPLE1
     + pickle.REDUCE, "not callable"),
    # bytes(n) would allocate n bytes; protocol 2 only ever writes bytes() for b""
    (_py2_global("__builtin__", "bytes") + pickle.BININT + struct.pack("<i", 2 ** 31 - 1)
     + pickle.TUPLE1 + pickle.REDUCE, "bytes() takes 0 positional arguments"),
], ids=["reconstruct", "ndarray", "bytes"])
def test_cifar_python_batch_cannot_make_numpy_allocate(tmp_path, call, refusal):
    _write_cifar_python(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x02" + call + pickle.STOP)
    with fails("E402", "test_batch", "cannot be unpickled", refusal):
        dataset("cifar10", tmp_path)


def test_cifar_python_batch_in_fortran_order_keeps_its_values(tmp_path):
    records = _write_cifar_python(tmp_path)[5]
    data = np.asfortranarray(records[:, 1:])
    batch = {b"labels": records[:, 0].tolist(), b"data": data}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=4))
    np.testing.assert_array_equal(dataset("cifar10", tmp_path).test, _planes([records]))


def test_cifar_python_batch_with_a_malformed_dtype_state_is_refused(tmp_path):
    # numpy's own dtype.__setstate__ crashes the interpreter on the 6-item state
    # (3, b"|", None, -1, -1, 0) (numpy 2.4: a segmentation fault), so the check runs in a
    # child process: a crash fails this test, not the whole test run.
    _write_cifar_python(tmp_path)
    good = _py2_batch(_cifar_batch(2, 0))
    state = pickle.NONE * 3 + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + pickle.TUPLE
    assert good.count(state) == 1
    (tmp_path / "test_batch").write_bytes(good.replace(state, state[2:]))  # two Nones fewer
    script = ("import sys; from gudlang.data import dataset; from gudlang.diagnostics import "
              "GudError\ntry: dataset('cifar10', sys.argv[1])\nexcept GudError as e: "
              "print(e.diagnostics[0].code, e.diagnostics[0].message)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("E402") and "unsupported dtype state" in done.stdout


_ARRAY = np.zeros((2, 3072), dtype=np.uint8)


@pytest.mark.parametrize("content, words", [
    (_pickled(_ARRAY), "it holds a numpy array, not a dict"),
    (_pickled({b"data": _ARRAY, b"labels": np.array([1, 2])}),
     "b'labels' is a numpy array, not a list of integers"),
    (_pickled({b"data": _ARRAY, b"labels": [1, np.array(2)]}), "(it holds a numpy array)"),
    (_pickled({b"data": np.dtype("u1"), b"labels": [1, 2]}), "b'data' is a numpy dtype"),
    # APPENDS onto an array: Python's message names the class it was built as
    (_pickled({b"data": _ARRAY})[:-2] + pickle.MARK + _py2_int(1) + pickle.APPENDS + b"s.",
     "numpy array"),
], ids=["top", "labels", "label", "data", "appends"])
def test_cifar_python_batch_messages_name_no_internal_class(tmp_path, content, words):
    _write_cifar_python(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    with fails("E402", "test_batch", "not a CIFAR-10 python batch", words) as info:
        dataset("cifar10", tmp_path)
    assert "_Pickled" not in str(info.value)


def test_empty_cifar_python_batch_fails(tmp_path):
    _write_cifar_python(tmp_path)
    (tmp_path / "test_batch").write_bytes(_py2_batch(np.zeros((0, 3073), dtype=np.uint8)))
    with fails("E407", "test_batch", "holds no images"):
        dataset("cifar10", tmp_path)


def test_cifar_python_batch_larger_than_memory_fails(tmp_path, monkeypatch):
    _write_cifar_python(tmp_path, sizes=(1, 1, 1, 1, 1, 2))
    size = (tmp_path / "test_batch").stat().st_size
    monkeypatch.setattr(readers, "memory_limit", lambda: size - 1)
    with fails("E402", "test_batch", "more than this machine's memory"):
        dataset("cifar10", tmp_path)


def test_cifar10_missing_python_file_is_named(tmp_path):
    _write_cifar_python(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with fails("E401", "binary version lacks", str(tmp_path / "cifar-10-batches-py")) as info:
        dataset("cifar10", tmp_path)
    assert info.value.diagnostics[0].message.endswith("the python version lacks data_batch_3")

