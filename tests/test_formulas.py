"""The formula table: every formula-valued declaration is resolved, hashed and written back
through `check.FORMULAS`, and every spec field is hashed or deliberately left out."""

import dataclasses
import typing

import numpy as np
import pytest
from pydantic import BaseModel

from gudlang import spec as S
from gudlang.check import FORMULAS, check_text
from gudlang.hashing import UNHASHED, full_hash, model_hash

BASE = """gud 1
data = digits()
basis = pixel()
gamma(t) = linear(t)
"""
REQUIRED = {S.NpzData: {"path": "x.npz"}, S.ImagesData: {"folder": "imgs"},
            S.StandardData: {"name": "mnist", "root": "data"}, S.ScalePrior: {"s": None},
            S.UniformParam: {"lo": 0.0, "hi": 1.0}, S.FixedParam: {"value": 1.0}}


def _kinds(annotation) -> list[type[BaseModel]]:
    """The model classes a field may hold (a discriminated union expanded)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def _other(value, annotation):
    """A valid value different from `value` for a field of this annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    options = [a for a in typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal]
    if options:
        return next(o for o in options if o != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 + 0.25 if value < 1 else value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, tuple):
        return value[:-1] + (_other(value[-1], type(value[-1])),) if value else (1,)
    if value is None:  # optional: pick a value of the non-None type
        inner = [a for a in typing.get_args(annotation) if a is not type(None)][0]
        if typing.get_origin(inner) is typing.Annotated:
            inner = typing.get_args(inner)[0]
        if typing.get_origin(inner) is tuple:
            return tuple(3 if a is int else 0.5 for a in typing.get_args(inner))
        return {int: 4, float: 0.5, str: "k"}[inner]
    raise AssertionError(f"no other value for {value!r} ({annotation})")


def _variants():
    """(field name, spec, spec with that one field changed) for every field of every
    declaration kind and block."""
    base = check_text(BASE)
    for section, info in S.Spec.model_fields.items():
        for kind in _kinds(info.annotation):
            original = kind(**REQUIRED.get(kind, {}))
            for name, field in kind.model_fields.items():
                if name == "kind" or kind is S.ScalePrior or (kind, name) == (S.UniformParam, "group"):
                    continue  # expressions: hashed in their checked form (the formula tests below)
                changed = original.model_copy(update={name: _other(getattr(original, name), field.annotation)})
                kind.model_validate(changed.model_dump())  # still a valid declaration
                yield (f"{section}.{name}", dataclasses.replace(base, spec=base.spec.model_copy(update={section: original})),
                       dataclasses.replace(base, spec=base.spec.model_copy(update={section: changed})))


@pytest.mark.parametrize("name, spec, changed", list(_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_spec_field_changes_the_hash_or_is_listed_as_deliberately_unhashed(name, spec, changed):
    section = name.split(".")[0]
    same_model = model_hash(spec, "fp") == model_hash(changed, "fp")
    if name in UNHASHED or section in UNHASHED:
        assert same_model, f"{name} is listed in hashing.UNHASHED but changes the model hash"
        if section == "sample":
            assert full_hash(spec, "fp") != full_hash(changed, "fp"), "sample settings enter the full hash"
    else:
        assert not same_model, f"{name} changes the model but not its hash: hash it or list it in UNHASHED"


def test_every_top_level_spec_field_is_a_declaration_block_or_listed():
    plain = [n for n, f in S.Spec.model_fields.items() if not _kinds(f.annotation)]
    assert sorted(plain) == sorted(n for n in plain if n in UNHASHED), plain


SLOTS = {
    "gamma": ("gamma_i(t) = linear(t - 0.1 * rank(i))", "gamma_i(t) = linear(t - 0.2 * rank(i))"),
    "path": ("path(t) = linear(t, -13, 5)", "path(t) = linear(t^2, -13, 5)"),
    "weight": ("weight(t) = 1 + exp(gamma(t))", "weight(t) = 2 + exp(gamma(t))"),
    "prior_scale": ("prior = scale(sqrt(var(i)))", "prior = scale(sqrt(var(i)) + 0.1)"),
    "given": ("given_i = col(i) < 0.5", "given_i = col(i) <= 0.5"),
}


def _spec(line: str, slot: str) -> str:
    text = BASE if slot != "gamma" else BASE.replace("gamma(t) = linear(t)\n", "")
    return text + line + "\n"


def test_the_formula_table_is_what_this_test_covers():
    assert {slot.name for slot in FORMULAS} == set(SLOTS)


# formulas that change how a trained model is sampled, not the trained network
SAMPLING_ONLY = {"path"}


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_each_formula_enters_the_hash(slot):
    one, other = (check_text(_spec(line, slot)) for line in SLOTS[slot])
    assert slot in one.formulas
    assert full_hash(one, "fp") != full_hash(other, "fp")
    assert (model_hash(one, "fp") == model_hash(other, "fp")) == (slot in SAMPLING_ONLY)


def test_the_group_of_a_per_component_param_enters_the_hash():
    text = BASE.replace("gamma(t) = linear(t)\n", "") + "param u_i ~ uniform(0, 1, group = {})\ngamma_i(t) = linear(u_i)\npath_i(t) = linear(2 * t - col(i))\n"
    by_col, by_row, by_component = (check_text(text.format(g)) for g in ("col(i)", "row(i)", "rank(i)"))
    hashes = {model_hash(c, "fp") for c in (by_col, by_row, by_component)}
    assert len(hashes) == 3
    assert model_hash(check_text(text.format("col(i) * 2")), "fp") != model_hash(by_col, "fp")


@pytest.mark.parametrize("slot", sorted(SLOTS))
def test_each_formula_survives_the_resolved_spec(slot):
    from gudlang.explain import resolved_text
    checked = check_text(_spec(SLOTS[slot][0], slot))
    again = check_text(resolved_text(checked.spec, checked.source))
    assert again.formulas[slot] == checked.formulas[slot]
    assert model_hash(again, "fp") == model_hash(checked, "fp")


def test_a_setting_whose_value_is_a_keyword_survives_the_resolved_spec():
    from gudlang.explain import resolved_text
    checked = check_text('gud 1\ndata = dataset("cifar10", root = "data")\nbasis = pixel()\ngamma(t) = linear(t)\n')
    again = check_text(resolved_text(checked.spec, checked.source))
    assert again.spec.data.root == "data"


@pytest.mark.parametrize("key", ["pi", "H", "a", "l_i"])
def test_a_setting_whose_value_reads_as_a_constant_or_name_survives_the_resolved_spec(tmp_path, key):
    # `key = pi` was written bare: it read back as 3.14159 (E210), `key = a` as the param a (E213)
    from gudlang.explain import resolved_text
    np.savez(tmp_path / "d.npz", **{key: np.zeros((4, 1, 4, 4))})
    text = (f'gud 1\ndata = npz("{(tmp_path / "d.npz").as_posix()}", key = "{key}")\nbasis = pixel()\n'
            'param a = 1\nl_i = 1\ngamma(t) = linear(a * t)\n')
    checked = check_text(text)
    again = check_text(resolved_text(checked.spec, checked.source))
    assert again.spec.data.key == key and model_hash(again, "fp") == model_hash(checked, "fp")
