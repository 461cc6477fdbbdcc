"""Semantic hashes: what must not change them, what must, and golden values for the
shipped specs (so an accidental change of the normal form is caught)."""

from pathlib import Path

import pytest

from golden_util import check_golden
from gudlang.check import check_text
from gudlang.hashing import full_hash, model_hash, payload

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
    "train settings": BASE.replace("steps = 100", "steps = 101"),
    "network": BASE + "network = unet(channels = 16)\n",
    "data split": BASE.replace("digits()", "digits(seed = 1)"),
}


@pytest.mark.parametrize("name", CHANGED)
def test_model_hash_changes_with(name):
    assert h(CHANGED[name]) != h(BASE)


def test_sample_settings_change_only_the_full_hash():
    other = BASE.replace("steps = 20", "steps = 40")
    assert h(other) == h(BASE)
    assert h(other, full=True) != h(BASE, full=True)


def test_data_identity_enters_the_hash():
    assert h(BASE, fp="1" * 64) != h(BASE)


def test_overrides_are_part_of_the_model():
    assert h(BASE, overrides={"a": "1.5"}) == h(CHANGED["param value"])
    assert h(BASE, overrides={"train.steps": "101"}) == h(CHANGED["train settings"])


def test_hash_is_tagged_with_its_scheme():
    assert h(BASE).startswith("gud1-sha256:") and len(h(BASE).split(":")[1]) == 64


def test_payload_has_defaults_and_no_runtime():
    p = payload(check_text(BASE, "t.gud"), FP, full=True)
    assert "runtime" not in p and p["train"]["lr"] == repr(2e-4)
    assert p["basis"] == {"kind": "pca", "channels": "mix"}


SPECS = sorted((ROOT / "specs").glob("*.gud"))


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_spec_hashes_are_stable(path):
    from gudlang.pipeline import load_spec_data
    checked = check_text(path.read_text(), str(path))
    data = load_spec_data(checked)
    text = f"model {model_hash(checked, data.fingerprint)}\nfull  {full_hash(checked, data.fingerprint)}\n"
    check_golden(ROOT / "tests" / "golden" / "hash" / f"{path.stem}.expected", text)
