"""From a checked spec to the mathematical model: data, basis, statistics, prior, schedule.

Input: a `CheckedSpec` (`gudlang.check`).
Output: `Model`, holding the loaded `DataSet`, the fitted `Basis`, the `ComponentStats`,
the `Prior`, the `Space` they make (every map between data and whitened components), the
per-component feature vectors the schedule is written in, the
`CompiledSchedule` of gamma (the training distribution), of the sampling path and of the loss
weight when the spec declares them, the group ids of params drawn per component, the numeric
warnings, and the model hash. A sampling path must stay inside the training support (E303),
a loss weight finite and >= 0 (E304). `build_model`
raises `GudError` (E3xx from the schedule checks, E4xx from the data, E5xx from bases and
priors), with the span of the spec statement that caused it.

Variances below `VAR_FLOOR` times the largest are raised to it (constant pixels, e.g. the
border of the digits, would otherwise give log(0) and infinite whitening).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from gudlang.bases import Basis, make_basis
from gudlang.check import CheckedSpec
from gudlang.conditioning import GivenSchedule, check_mask
from gudlang.data import DataSet, load_data
from gudlang.diagnostics import Diagnostic, GudError
from gudlang.hashing import full_hash, model_hash, redundant
from gudlang.priors import Prior, matched, scaled, white
from gudlang.schedules import (CompiledSchedule, check_schedule, check_support, check_weight, compile_schedule,
                               evaluate_condition, evaluate_constant, generation_order)
from gudlang.space import Space
from gudlang.spec import Spec
from gudlang.stats import ComponentStats, component_features, fit_stats

VAR_FLOOR = 1e-5


@dataclass
class Model:
    """Everything a spec determines before any network is trained."""

    checked: CheckedSpec
    data: DataSet
    basis: Basis
    stats: ComponentStats
    prior: Prior
    features: dict[str, np.ndarray]
    schedule: CompiledSchedule
    warnings: list[Diagnostic] = field(default_factory=list)
    given: np.ndarray | None = None  # bool (D,): the components the spec declares given
    path: CompiledSchedule | None = None  # the sampling path, when it is not gamma
    weight: CompiledSchedule | None = None  # the loss weight (B, D), when there is one
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # per-component param -> (D,) group ids
    space: Space = field(init=False)

    def __post_init__(self):
        self.space = Space(self.stats.mean, self.basis, self.prior)

    @property
    def spec(self) -> Spec:
        return self.checked.spec

    @property
    def dim(self) -> int:
        return int(np.prod(self.data.shape))

    @property
    def model_hash(self) -> str:
        return model_hash(self.checked, self.data.fingerprint)

    @property
    def full_hash(self) -> str:
        return full_hash(self.checked, self.data.fingerprint)

    @property
    def conditioned_schedule(self):
        """The schedule as trained: given components held clean (`GivenSchedule`)."""
        return self.schedule if self.given is None else GivenSchedule(self.schedule, self.given)

    @property
    def sampling_path(self) -> CompiledSchedule:
        """The schedule samplers, the likelihood and the plots follow: `path_i(t)` when the
        spec declares one, else gamma."""
        return self.path if self.path is not None else self.schedule

    @property
    def sampling_schedule(self):
        """`sampling_path` with the given components held clean."""
        return self.sampling_path if self.given is None else GivenSchedule(self.sampling_path, self.given)

    def generation_order(self) -> np.ndarray:
        """Component indices, first generated first, on the sampling path: the component whose
        gamma is half-way between its values at t = 0 and t = 1 latest is generated first (later
        noising = earlier generation); ties by mean true log-SNR (`schedules.generation_order`)."""
        return generation_order(self.sampling_path, self.features["wvar"])


def _anchored(err: GudError, checked: CheckedSpec, section: str) -> GudError:
    """`err` pointed at the `section = ...` declaration, with a note naming the -s overrides of
    its options (the line shows the spec's values, not the overridden ones)."""
    from dataclasses import replace
    smap = checked.source
    path = smap.anchors.get((section,))
    err = err.with_span(smap.span(path) if path else None).with_path(smap.path)
    changed = [f"-s {k}={v}" for k, v in checked.overrides if k.startswith(section + ".")]
    if not changed:
        return err
    note = f"with {', '.join(changed)} (the line shows the spec's own values)"
    return GudError([replace(d, notes=d.notes + (note,)) for d in err.diagnostics])


def load_spec_data(checked: CheckedSpec) -> DataSet:
    """The data a spec declares (E4xx errors point at its `data = ...` line)."""
    decl = checked.spec.data.model_dump()
    kind = decl.pop("kind")
    try:
        return load_data(kind, **decl)
    except GudError as e:
        raise _anchored(e, checked, "data") from None


def build_prior(checked: CheckedSpec, feats: dict[str, np.ndarray]) -> Prior:
    """The declared prior; `feats` are the basis features with the (floored) `var`."""
    var = feats["var"]
    try:
        if checked.spec.prior.kind == "white":
            return white(len(var))
        if checked.spec.prior.kind == "matched":
            return matched(torch.as_tensor(var))
        return scaled(evaluate_constant(checked.prior_scale, feats, checked.fixed_params, len(var)))
    except GudError as e:
        raise _anchored(e, checked, "prior") from None


def build_model(checked: CheckedSpec, data: DataSet | None = None, *, stats: ComponentStats | None = None,
                basis_state: dict | None = None, use_cache: bool = True) -> Model:
    """CheckedSpec -> Model. `stats` / `basis_state` come from a checkpoint when given."""
    try:
        return _build_model(checked, data, stats, basis_state, use_cache)
    except RecursionError:
        raise GudError.one("E107", "the schedule is nested too deeply to compile", path=checked.source.path,
                           help="simplify the schedule expression") from None


def check_network(checked: CheckedSpec, shape) -> None:
    """Build the declared network on the meta device (no memory, no time) so that options that
    cannot work with this data (groups not dividing a width, too many levels, empty lists)
    are E61x errors at the `network = ...` line when the spec is checked, not at training."""
    from gudlang.networks import make_network
    options = checked.spec.network.model_dump()
    kind = options.pop("kind")
    if kind == "oracle":
        return
    try:
        with torch.device("meta"):
            make_network(kind, tuple(shape), **options)
    except GudError as e:
        raise _anchored(e, checked, "network") from None


def _build_model(checked, data, stats, basis_state, use_cache) -> Model:
    spec = checked.spec
    data = data if data is not None else load_spec_data(checked)
    check_network(checked, data.shape)
    options = spec.basis.model_dump()
    kind = options.pop("kind")
    try:
        basis = make_basis(kind, data.shape, **options)
        if basis_state is not None:
            basis.load_state_tensors(basis_state)
        if stats is None:
            stats = fit_stats(data, basis, use_cache=use_cache)
    except GudError as e:
        raise _anchored(e, checked, "basis") from None
    if not float(np.max(stats.var)) > 0.0:
        raise _anchored(GudError.one("E522", f"the data do not vary: all {len(stats.var)} components have "
                                     "zero variance", help="check the data: every sample is the same"),
                        checked, "data")
    var = np.maximum(np.asarray(stats.var, dtype=np.float64), VAR_FLOOR * float(np.max(stats.var)))
    feats = component_features(basis, stats)
    feats["var"] = var
    prior = build_prior(checked, feats)
    with np.errstate(all="ignore"):
        feats["wvar"] = var / prior.scales.detach().double().cpu().numpy() ** 2
    bad = ~np.isfinite(feats["wvar"]) | (feats["wvar"] <= 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise _anchored(GudError.one(
            "E510", f"the prior scale of component {i} ({float(prior.scales[i]):.3g}) gives it the whitened "
                    f"variance var / scale^2 = {feats['wvar'][i]:.3g}, which must be positive and finite",
            help="use prior scales of the order of the data's standard deviations"), checked, "prior")
    given = given_mask(checked, feats)
    drawn, ranges = checked.drawn_means, checked.drawn_ranges
    groups = {n: _group_ids(checked, n, feats) for n in checked.per_component}
    constant = _never_noised(stats, given)
    with _at_formula(checked, "gamma"):
        schedule = compile_schedule(checked.gamma, feats, checked.fixed_params, drawn, len(var))
        warnings = check_schedule(schedule, feats["wvar"], ranges, constant, coverage=checked.path is None)
    warnings = list(checked.warnings) + [w.with_span(checked.source.span(_gamma_path(checked)))
                                         .with_path(checked.source.path) for w in warnings]
    path = weight = None
    if checked.path is not None:
        with _at_formula(checked, "path"):
            path = compile_schedule(checked.path, feats, checked.fixed_params, drawn, len(var))
            path_warnings = check_schedule(path, feats["wvar"], {}, constant)
            check_support(schedule, path, ranges, groups, ignore=given)
        span = checked.source.span(_formula_path(checked, "path"))
        warnings += [w.with_span(span).with_path(checked.source.path) for w in path_warnings]
    if checked.weight is not None and "weight" not in redundant(checked):  # weight(t) = 1: the plain loss
        with _at_formula(checked, "weight"):
            weight = compile_schedule(checked.weight, feats, checked.fixed_params, drawn, len(var))
            check_weight(weight, ranges, ignore=given)
    return Model(checked, data, basis, stats, prior, feats, schedule, warnings, given, path, weight, groups)


def _never_noised(stats: ComponentStats, given: np.ndarray | None) -> np.ndarray:
    """(D,) bool: components whose data never vary, and given ones (held clean: their own gamma
    never acts); the coverage warnings leave them out."""
    constant = np.asarray(stats.var) <= VAR_FLOOR * float(np.max(stats.var))
    return constant if given is None else constant | given


@contextmanager
def _at_formula(checked: CheckedSpec, name: str):
    """Point the GudErrors raised inside at the line of formula `name`."""
    try:
        yield
    except GudError as e:
        raise e.with_span(checked.source.span(_formula_path(checked, name))).with_path(checked.source.path) from None


def _group_ids(checked: CheckedSpec, name: str, features: dict[str, np.ndarray]) -> np.ndarray:
    """(D,) int: which draw of per-component param `name` each component takes (equal values
    of its `group` expression share one; without one, every component has its own)."""
    dim = len(features["var"])
    if name not in checked.groups:
        return np.arange(dim)
    values = evaluate_constant(checked.groups[name], features, checked.fixed_params, dim)
    if not np.isfinite(values).all():
        path = checked.source.anchors.get(("param_group", name), ())
        raise GudError.one("E210", f"the group of `{name}` is not finite for component "
                                   f"{int(np.argmax(~np.isfinite(values)))}",
                           span=checked.source.span(path), path=checked.source.path)
    return np.unique(values, return_inverse=True)[1].reshape(-1)


def _formula_path(checked: CheckedSpec, name: str):
    return _definition_path(checked, (name + "_i", name))


def _gamma_path(checked: CheckedSpec):
    return _formula_path(checked, "gamma")


def _definition_path(checked: CheckedSpec, names) -> tuple:
    for k, d in checked.spec.definitions:
        if d.name in names:
            return ("statements", k, "body")
    return ()


def given_mask(checked: CheckedSpec, features: dict[str, np.ndarray]) -> np.ndarray | None:
    """The spec's given mask (D,) bool, or None when it declares none; E680 at its line when it
    gives every component or none."""
    if checked.given is None:
        return None
    mask = evaluate_condition(checked.given, features, checked.fixed_params, len(features["var"]))
    try:
        return check_mask(mask)
    except GudError as e:
        path = _definition_path(checked, ("given_i", "given"))
        raise e.with_span(checked.source.span(path)).with_path(checked.source.path) from None


def given_from_text(model: Model, text: str) -> np.ndarray:
    """The mask (D,) bool that a condition written as in a spec (e.g. "col(i) < 0.5") selects
    in this model: checked as `given_i = TEXT` in place of the spec's own given mask, with the
    spec's definitions and params in scope. Errors name the condition (E2xx, E680)."""
    with _named("condition", text):
        checked = _checked_with(model, "given", f"given_i = {text}", text, "condition")
        return given_mask(checked, model.features)


def with_path_text(model: Model, text: str) -> Model:
    """The same model sampled along another path: `text` written as the right-hand side of a
    spec's `path_i(t) = ...` (e.g. "edm_path(t, rho = 5)"), with the spec's definitions and
    params in scope, checked like a path of the spec (non-decreasing, finite, inside the
    training support: E301 / E302 / E303). The trained network is unchanged: the path is not
    part of the model hash. Errors name the path; the model's warnings become the path's
    coverage warnings (W301 / W302), which name it too."""
    from dataclasses import replace

    with _named("path", text):
        checked = _checked_with(model, "path", f"path_i(t) = {text}", text, "path")
        sampling = compile_schedule(checked.path, model.features, checked.fixed_params, checked.drawn_means,
                                    model.dim)
        warnings = check_schedule(sampling, model.features["wvar"], {}, _never_noised(model.stats, model.given))
        check_support(model.schedule, sampling, model.checked.drawn_ranges, model.groups, ignore=model.given)
    warnings = [replace(w, message=f"in the path `{text}`: {w.message}") for w in warnings]
    return replace(model, path=sampling, warnings=warnings)


def _checked_with(model: Model, name: str, line: str, text: str, what: str) -> CheckedSpec:
    """The model's spec checked again with formula `name` replaced by `line` (E003 when the
    user's `text` is not one line)."""
    from gudlang.check import check_text

    if "\n" in text or "\r" in text:
        raise GudError.one("E003", f"the {what} must be one line, got {text!r}")
    _one_statement(line, text, what)
    source = model.checked.source
    lines = source.text.splitlines()
    path = _formula_path(model.checked, name)
    if path:
        span = source.span(path[:2])
        del lines[span.line - 1: span.end_line]
    lines.append(line)
    return check_text("\n".join(lines) + "\n", None, dict(model.checked.overrides))


def _one_statement(line: str, text: str, what: str) -> None:
    """E003 when `line` parses as more than one statement (`gamma_i(t); given_i = ...`): the
    rest would change the spec behind the user's back. Parse errors are left to the check."""
    from gudlang.lower import parse_program

    try:
        program, _ = parse_program(f"gud 1\n{line}\n")
    except GudError:
        return
    if len(program.statements) != 1:
        raise GudError.one("E003", f"the {what} must be one formula, got {text!r}",
                           help=f"give the right-hand side alone; `;` would start another statement, "
                                f"which a {what} cannot add")


@contextmanager
def _named(what: str, text: str):
    """Errors raised inside say they are about the user's `what` `text`, with no spec line."""
    from dataclasses import replace
    try:
        yield
    except GudError as e:
        if all(d.message.startswith((f"the {what} must be one line", f"the {what} must be one formula"))
               for d in e.diagnostics):
            raise
        raise GudError([replace(d, message=f"in the {what} `{text}`: {d.message}", span=None, path=None)
                        for d in e.diagnostics]) from None


__all__ = ["Model", "build_model", "build_prior", "given_from_text", "given_mask",
           "load_spec_data", "with_path_text", "VAR_FLOOR"]
