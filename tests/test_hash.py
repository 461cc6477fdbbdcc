"""Semantic hashes: what must not change them, what must, and golden values for the
shipped specs (so an accidental change of the normal form is caught)."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from golden_util import check_golden
from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.hashing import full_hash, model_hash, payload
from reference import Reference

ROOT = Path(__file__).resolve().parent.parent
FP = "0" * 64  # a stand-in data fingerprint; the data's own is tested in test_data

BASE = """gud 1
# a comment
data = digits()
basis = pca()
prior = white
param a = 1.0
l_i = -log(var(i))
gamma_i(t) = soft(t, l_i, a = a)
train { steps = 100; batch = 32 }
sample { sampler = heun; steps = 20 }
"""


def h(text: str, full: bool = False, fp: str = FP, overrides=None) -> str:
    checked = check_text(text, "t.gud", overrides)
    return full_hash(checked, fp) if full else model_hash(checked, fp)


SAME = {
    "layout and comments": """gud 1
data=digits() basis=pca()   # same thing
prior=white param a=1.0 l_i=-log(var(i)) gamma_i(t)=soft(t,l_i,a=a)
train{steps=100;batch=32} sample{sampler=heun;steps=20}""",
    "1 vs 1.0": BASE.replace("param a = 1.0", "param a = 1"),
    "block and statement order": """gud 1
sample { steps = 20; sampler = heun }
train { batch = 32; steps = 100 }
gamma_i(t) = soft(t, l_i, a = a)
l_i = -log(var(i))
param a = 1.0
prior = white
basis = pca()
data = digits()
""",
    "defaults written out": BASE.replace("basis = pca()", 'basis = pca(channels = "mix")')
                                .replace("data = digits()", "data = digits(test_fraction = 0.1, seed = 0)"),
    "definition renamed": BASE.replace("l_i", "order_i"),
    "fixed param inlined": BASE.replace("a = a)", "a = 1)"),
    "runtime settings": BASE + "runtime { device = cpu; dtype = float64; compile = true }\n",
    "arithmetic folded": BASE.replace("param a = 1.0", "param a = 0.5 * 2"),
    "how long it trains and logs": BASE.replace("steps = 100", "steps = 101; log_every = 7; checkpoint_every = 9"),
    # an option added later, at the default that keeps the older networks: older hashes stand
    "network option added later, at its default": BASE + 'network = unet(state = "linear")\n',
    # formulas that say what leaving them out says
    "a loss weight of 1": BASE + "weight_i(t) = 2 - 1\n",
    "a prior scale of 1": BASE.replace("prior = white", "prior = scale(1)"),
    "a sampling path equal to gamma": BASE + "path_i(t) = soft(t, l_i, a = 1)\n",
}


@pytest.mark.parametrize("name", SAME)
def test_model_and_full_hash_ignore(name):
    assert h(SAME[name]) == h(BASE)
    assert h(SAME[name], full=True) == h(BASE, full=True)


CHANGED = {
    "param value": BASE.replace("param a = 1.0", "param a = 1.5"),
    "schedule": BASE.replace("a = a)", "a = a, g_den = -8)"),
    "basis": BASE.replace("pca()", "pca(channels = \"separate\")"),
    "prior": BASE.replace("prior = white", "prior = matched"),
    "train settings": BASE.replace("steps = 100", "steps = 100; lr = 0.001"),
    "network": BASE + "network = unet(channels = 16)\n",
    "how gamma enters the network": BASE + 'network = unet(state = "channels")\n',
    "data split": BASE.replace("digits()", "digits(seed = 1)"),
}


@pytest.mark.parametrize("name", CHANGED)
def test_model_hash_changes_with(name):
    assert h(CHANGED[name]) != h(BASE)


def test_train_steps_enter_the_hash_only_where_they_set_the_cosine_decay():
    cosine = BASE.replace("steps = 100", "steps = 100; lr_schedule = cosine")
    assert h(cosine.replace("steps = 100", "steps = 200")) != h(cosine)
    assert h(BASE.replace("steps = 100", "steps = 200")) == h(BASE)


def test_sample_settings_change_only_the_full_hash():
    other = BASE.replace("steps = 20", "steps = 40")
    assert h(other) == h(BASE)
    assert h(other, full=True) != h(BASE, full=True)


def test_data_identity_enters_the_hash():
    assert h(BASE, fp="1" * 64) != h(BASE)


def test_overrides_are_part_of_the_model():
    assert h(BASE, overrides={"a": "1.5"}) == h(CHANGED["param value"])
    assert h(BASE, overrides={"train.lr": "0.001"}) == h(CHANGED["train settings"])


def test_hash_is_tagged_with_its_scheme():
    assert h(BASE).startswith("gud2-sha256:") and len(h(BASE).split(":")[1]) == 64


def test_payload_has_defaults_and_no_runtime():
    p = payload(check_text(BASE, "t.gud"), FP, full=True)
    assert "runtime" not in p and p["train"]["lr"] == repr(2e-4)
    assert p["basis"] == {"kind": "pca", "channels": "mix"}


SPECS = sorted([*(ROOT / "specs").glob("*.gud"), *(ROOT / "specs").glob("peers/*.gud")])


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_hashes_are_stable(path):
    from gudlang.pipeline import load_spec_data
    checked = check_text(path.read_text(), str(path))
    data = load_spec_data(checked)
    text = f"model {model_hash(checked, data.fingerprint)}\nfull  {full_hash(checked, data.fingerprint)}\n"
    name = path.stem if path.parent.name == "specs" else f"{path.parent.name}_{path.stem}"
    check_golden(ROOT / "tests" / "golden" / "hash" / f"{name}.expected", text)


# --------------------------------------------------------------------------- hash vs meaning
# Pairs of schedules written two ways: the same formula (layout, 1 vs 1.0, 2 * 3 vs 6, a
# definition or helper vs its body inlined, keyword order, a fixed param vs its value), and,
# half the time, with one change of meaning (a constant, the sign of a zero, min vs max,
# where's branches swapped, one- vs two-argument min, clip's arguments swapped). Whenever the
# model hashes are equal, the reference evaluator (tests/reference.py, which shares no code
# with the hashing) must find the same gamma and slope on random features: a pair that hashes
# equal but evaluates differently fails here. Unchanged pairs must also hash equal, as the
# hashing promises.

NUMBERS = [0.0, -0.0, 1.0, 2.0, 6.0, 0.5, -2.0, 3.25, 1e300, 1e-300]
FOLDED = {6.0: "(2 * 3)", 0.5: "(1 / 2)", -2.0: "(4 - 6)", 1.0: "(3 - 2)"}
FEATURES_PIXEL = ["var", "wvar", "rank", "row", "col", "chan"]


@st.composite
def trees(draw, depth: int = 3, moving: bool = True):
    """A formula as a nested tuple; `moving = False`: no t (what a reduction may take)."""
    leaves = [("num", v) for v in NUMBERS] + [("feat", f) for f in FEATURES_PIXEL] + [("c",)] + \
        ([("t",), ("t",), ("b",), ("l",)] if moving else [])
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        return draw(st.sampled_from(leaves))
    kind = draw(st.sampled_from(["bin", "fn", "mm", "reduce", "clip", "where"] + (["h"] if moving else [])))
    sub = lambda: draw(trees(depth - 1, moving))  # noqa: E731
    if kind == "bin":
        return ("bin", draw(st.sampled_from(["+", "-", "*", "/", "^"])), sub(), sub())
    if kind == "fn":
        return ("fn", draw(st.sampled_from(["exp", "log", "sqrt", "tanh", "abs", "softplus"])), sub())
    if kind == "mm":
        return ("mm", draw(st.sampled_from(["min", "max"])), sub(), sub())
    if kind == "reduce":
        return ("reduce", draw(st.sampled_from(["min", "max", "mean", "sum"])), draw(trees(depth - 1, False)))
    if kind == "clip":
        return ("clip", sub(), sub(), sub())
    if kind == "where":
        return ("where", draw(st.sampled_from(["<", "<=", ">", "==", "!="])), sub(), sub(), sub(), sub())
    return ("h", sub(), sub() if draw(st.booleans()) else None, draw(st.booleans()))


def mutate(tree, k: int):
    """The tree with its k-th mutable node (depth first, modulo their number) changed in meaning."""
    nodes = []

    def walk(node, path):
        if node[0] in ("num", "mm", "where", "clip") or node[0] == "reduce" and node[1] == "min":
            nodes.append(path)
        for j, child in enumerate(node):
            if isinstance(child, tuple):
                walk(child, path + (j,))

    walk(tree, ())
    if not nodes:
        return tree, "nothing to change"
    path = nodes[k % len(nodes)]

    def change(node):
        if node[0] == "num" and node[1] == 0.0:
            return ("num", -node[1]), f"the sign of {node[1]!r}"
        if node[0] == "num":
            return ("num", node[1] + 1.0), f"constant {node[1]!r} + 1"
        if node[0] == "mm":
            return ("mm", "max" if node[1] == "min" else "min", *node[2:]), "min <-> max"
        if node[0] == "where":
            return ("where", node[1], node[2], node[3], node[5], node[4]), "where's branches swapped"
        if node[0] == "clip":
            return ("clip", node[2], node[1], node[3]), "clip(x, lo, hi) -> clip(lo, x, hi)"
        return ("mm", "min", node[2], ("num", 0.5)), "min(x) -> min(x, 0.5)"

    def rebuild(node, rest):
        if not rest:
            return change(node)
        j = rest[0]
        child, why = rebuild(node[j], rest[1:])
        return node[:j] + (child,) + node[j + 1:], why

    return rebuild(tree, path)


H_BODY = "x * y + sqrt(abs(x))"  # h(x, y = 2) = H_BODY
L_BODY = "rank(i) * 2 - var(i)"  # l_i = L_BODY
C_VALUE = 2.5  # param c = C_VALUE


def render(tree, plain: bool) -> str:
    """Source text of a tree; `plain` writes it as is, otherwise with definitions and params
    inlined, numbers respelled (6 as (2 * 3), 1.0 as 1) and extra parentheses."""
    kind = tree[0]
    r = lambda node: render(node, plain)  # noqa: E731
    if kind == "num":
        v = tree[1]
        if not plain and v in FOLDED:
            return FOLDED[v]
        text = repr(int(v)) if not plain and v.is_integer() and abs(v) < 1e15 and str(v) != "-0.0" else repr(v)
        return f"({text})" if text.startswith("-") else text
    if kind == "feat":
        return f"{tree[1]}(i)"
    if kind == "t":
        return "t" if plain else "(t)"
    if kind == "b":
        return "b"
    if kind == "c":
        return "c" if plain else repr(C_VALUE)
    if kind == "l":
        return "l_i" if plain else f"({L_BODY})"
    if kind == "bin":
        return f"({r(tree[2])} {tree[1]} {r(tree[3])})" if plain else f"( {r(tree[2])}{tree[1]}{r(tree[3])} )"
    if kind in ("fn", "reduce"):
        return f"{tree[1]}({r(tree[2])})"
    if kind == "mm":
        return f"{tree[1]}({r(tree[2])}, {r(tree[3])})"
    if kind == "clip":
        return f"clip({r(tree[1])}, {r(tree[2])}, {r(tree[3])})"
    if kind == "where":
        return f"where({r(tree[2])} {tree[1]} {r(tree[3])}, {r(tree[4])}, {r(tree[5])})"
    x, y, keywords = tree[1], tree[2], tree[3]
    if plain:
        if y is None:
            return f"h({r(x)})"
        return f"h(y = {r(y)}, x = {r(x)})" if keywords else f"h({r(x)}, y = {r(y)})"
    return "(" + re.sub(r"\b([xy])\b", lambda m: f"({r(x) if m.group(1) == 'x' else (r(y) if y else '2')})",
                         H_BODY) + ")"


def spec_text(tree, plain: bool) -> str:
    lines = ["gud 1", "data = digits()", "basis = pixel()", "prior = white", "param b ~ uniform(0, 1)"]
    if plain:
        lines += [f"param c = {C_VALUE!r}", f"l_i = {L_BODY}", f"h(x, y = 2) = {H_BODY}",
                  f"gamma_i(t) = {render(tree, plain)}"]
    else:
        lines += [f"gamma_i(t)={render(tree, plain)}"]
    return "\n".join(lines) + "\n"


def _same_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return (a == b) | (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= 1e-14 * np.abs(a))


# derandomized: the same examples every run, so that a hashing bug found in rare corners
# (the ones below) does not make the suite flicker
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(trees(), st.booleans(), st.integers(0, 1000), st.integers(0, 2 ** 32 - 1))
def test_equal_hashes_mean_equal_schedules(tree, change, k, seed):
    other, why = mutate(tree, k) if change else (tree, "the same formula")
    first, second = spec_text(tree, plain=True), spec_text(other, plain=False)
    note(f"{why}:\n{first}\n{second}")
    try:
        hashes = [h(first), h(second)]
    except GudError:
        return  # e.g. the schedule does not depend on t: refused alike, nothing to hash
    if not change:
        assert hashes[0] == hashes[1], "the same formula written two ways hashes differently"
    if hashes[0] != hashes[1]:
        return
    rng = np.random.default_rng(seed)
    t = np.concatenate([[0.0, 0.5, 1.0], rng.uniform(0.0, 1.0, 29)])
    params = {"b": rng.uniform(0.0, 1.0, len(t))}
    for _ in range(3):
        features = {name: rng.uniform(0.01, 3.0, 8) for name in FEATURES_PIXEL}
        a, b = Reference(first)(t, features, params), Reference(second)(t, features, params)
        same = _same_values(a.gamma, b.gamma) & _same_values(a.slope, b.slope)
        assert same.all(), (f"equal hashes, different schedules ({why}): gamma {a.gamma[~same][:3]} vs "
                            f"{b.gamma[~same][:3]}")


SIGNED = "gud 1\ndata = digits()\nbasis = pixel()\ngamma(t) = linear(t) + exp({})\n"


@pytest.mark.parametrize("negative,positive", [("1 / (-0.0)", "1 / 0"), ("(-10) ^ 401", "10 ^ 401")])
def test_constants_folding_to_infinities_of_opposite_sign_hash_apart(negative, positive):
    """exp(-inf) = 0 and exp(inf) = inf: different schedules (as the reference says), so
    different hashes. The hashing folds both 1 / -0.0 and an overflowing power of a negative
    number to +inf."""
    t, features = np.array([0.5]), {"rank": np.zeros(2)}
    values = [Reference(SIGNED.format(x))(t, features).gamma[0, 0] for x in (negative, positive)]
    assert np.isfinite(values[0]) and values[1] == np.inf
    assert h(SIGNED.format(negative)) != h(SIGNED.format(positive))


def test_zero_to_a_negative_power_hashes_without_a_traceback():
    """0 ^ (-1) is inf (IEEE, as the compiler and the reference fold it); hashing it raised
    ZeroDivisionError from Python's float power, a raw traceback from `gud hash`."""
    assert h(SIGNED.format("0 ^ (-1)")).startswith("gud2-sha256:")
