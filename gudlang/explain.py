"""`gud explain`: what a spec means, in words and numbers.

Input: a `Model` (`gudlang.pipeline.build_model`).
Output: text: the resolved spec (every default explicit; it parses and hashes like the
original), D and shapes, the training signal (`training_signal`: the shares of the (t,
component) pairs training draws in motion and clean, with a hint to weight the loss when few
move), the generation order (components whose gamma never moves apart, as
never noised; the most components in motion at once, `schedules.motion`), a table of gamma,
sigma and true SNR at a few t for a few generated components, and the generated schedule
code. `resolved_text` is also what a run directory stores as `resolved.gud`.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from gudlang import ast as A
from gudlang.builtins import FEATURES, constants, keywords
from gudlang.check import describe_shape
from gudlang.fmt import format_expr, format_program
from gudlang.lower import parse_program
from gudlang.schedules import MOTION_BETA, Motion, columns_of, motion
from gudlang.spec import FixedParam, Spec


def _value(v, names: frozenset[str] = frozenset()) -> str:
    """A setting's value as spec text; a string is written as a bare word (`sampler = heun`)
    unless the word would read as something else: a keyword, a constant (`pi`, `H`) or one of
    `names` (the spec's params and definitions)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, str):
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) and v not in {"true", "false", "none"} \
                and v not in keywords() and v not in constants() and v not in names:
            return v
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x, names) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _call(kind: str, fields: dict, names: frozenset[str]) -> str:
    args = ", ".join(f"{k} = {_value(v, names)}" for k, v in fields.items())
    return f"{kind}({args})"


def resolved_text(spec: Spec, source: A.SourceMap) -> str:
    """The spec with every default written out, canonically formatted."""
    lines = ["gud 1", ""]
    names = frozenset(spec.params) | frozenset(d.name for _, d in spec.definitions)
    data = spec.data.model_dump()
    lines.append(f"data = {_call(data.pop('kind'), data, names)}")
    basis = spec.basis.model_dump()
    lines.append(f"basis = {_call(basis.pop('kind'), basis, names)}")
    if spec.prior.kind == "scale":
        lines.append(f"prior = scale({format_expr(spec.prior.s)})")
    else:
        lines.append(f"prior = {spec.prior.kind}")
    net = spec.network.model_dump()
    lines.append(f"network = {_call(net.pop('kind'), net, names)}")
    lines.append("")
    for name, p in spec.params.items():
        if isinstance(p, FixedParam):
            lines.append(f"param {name} = {p.value!r}")
        else:
            group = "" if p.group is None else f", group = {format_expr(p.group)}"
            lines.append(f"param {name} ~ uniform({p.lo!r}, {p.hi!r}{group})")
    definitions = A.Program(None, tuple(d for _, d in spec.definitions))
    body = format_program(definitions, A.SourceMap()).splitlines()
    lines.extend(line for line in body if line.strip() and not line.startswith("gud "))
    lines.append("")
    for block in ("train", "sample", "runtime"):
        settings = getattr(spec, block).model_dump()
        inner = "; ".join(f"{k} = {_value(v, names)}" for k, v in settings.items())
        lines.append(f"{block} {{ {inner} }}")
    text = "\n".join(lines) + "\n"
    program, smap = parse_program(text, "<resolved>")
    return format_program(program, smap)


def _features_of(expr: A.Expr) -> list[str]:
    """The features an inlined formula reads (not those of the spec's other formulas or unused
    definitions, which `CheckedSpec.features` holds too)."""
    return sorted({n.func for _, n in A.walk(expr) if isinstance(n, A.Call) and n.func in FEATURES})


def _order_words(model, order: np.ndarray, moving: Motion) -> list[str]:
    """The generation order in words: how many components never move (never noised, so never
    generated), the first, second, middle and last generated of the others, and the most
    components in motion at once."""
    feats = model.features
    names = [n for n in ("rank", "var", "level", "freq", "row", "col", "chan") if n in feats]

    from gudlang.pipeline import VAR_FLOOR
    stats_var = np.asarray(model.stats.var, dtype=np.float64)
    floored = stats_var <= VAR_FLOOR * float(np.max(stats_var))

    def describe(i: int) -> str:
        constant = f"; constant in the data: var is the floor, {VAR_FLOOR:g} of the largest" if floored[i] else ""
        return f"component {i} (" + ", ".join(f"{n} {feats[n][i]:.3g}" for n in names) + constant + ")"

    out = []
    given = np.zeros(len(order), bool) if model.given is None else model.given
    if given.any():
        out.append(f"  given:           {int(given.sum())} of {len(order)} components (given_i: known when "
                   f"sampling, held clean, never generated), e.g. {describe(int(np.flatnonzero(given)[0]))}")
    still = moving.never_noised & ~given
    if still.any():
        out.append(f"  never noised:    {int(still.sum())} of {len(order)} components (gamma constant in t), "
                   f"e.g. {describe(int(np.flatnonzero(still)[0]))}")
    order = order[~moving.never_noised[order]]
    d = len(order)
    if d:
        with torch.no_grad():  # gamma paths, to tell components generated together
            gamma = model.sampling_schedule(torch.linspace(0, 1, 33, dtype=torch.float64))[0].numpy()
        log_snr = np.log(np.asarray(model.features["wvar"], dtype=np.float64))[None] - gamma
        first_two = np.array([order[0], order[min(1, d - 1)]])  # on a fine grid: windows of 1/64 of t
        pair, _ = columns_of(model.sampling_schedule, model.dim, torch.linspace(0, 1, 4097, dtype=torch.float64),
                             first_two)
        together = bool(np.allclose(pair[:, 0], pair[:, 1], rtol=0, atol=1e-9))
        same = bool(np.allclose(log_snr[:, order], log_snr[:, order[:1]], rtol=0, atol=1e-9))
        if same and d > 1:
            out.append(f"  no order:        all {d} generated components have the same true SNR at every t "
                       "(listed by index)")
        out += [f"  first generated: {describe(int(order[0]))}",
                f"  then:            {describe(int(order[min(1, d - 1)]))}"
                + (" (its gamma is the first's: generated together)" if together and d > 1 else ""),
                f"  middle:          {describe(int(order[d // 2]))}",
                f"  last generated:  {describe(int(order[-1]))}"]
    most, when = moving.busiest
    out += [f"  most in motion:  {most} of {len(moving.never_noised)} components at once, first at t = {when:.3g}",
            f"                   (in motion: beta > {MOTION_BETA:g}, or gamma strictly between its values "
            f"at t = 0 and t = 1)"]
    return out


def explain_text(model) -> str:
    spec = model.spec
    checked = model.checked
    out = ["# resolved spec", resolved_text(spec, checked.source).rstrip(), ""]
    c, h, w = model.data.shape
    out += ["# shapes",
            f"data:      {model.data.describe()}",
            f"D:         {model.dim} = {c} x {h} x {w} (channels x height x width)",
            f"basis:     {spec.basis.kind}; prior: {spec.prior.kind}",
            f"schedule:  {describe_shape(checked.gamma_shape)}; features used: "
            f"{', '.join(_features_of(checked.gamma)) or 'none'}",
            *([f"sampling:  along path ({describe_shape(checked.shapes['path'])}); gamma is the training "
               "distribution (t ~ U(0, 1))"] if checked.path is not None else []),
            *([f"loss:      weighted by weight ({describe_shape(checked.shapes['weight'])})"
               if model.weight is not None else "loss:      weight 1, the plain loss (hashed as none)"]
              if checked.weight is not None else []),
            _signal_line(model),
            "drawn params: " + (", ".join(
                f"{n} ~ uniform({spec.params[n].lo:g}, {spec.params[n].hi:g}), " + _drawn_how(model, n)
                for n in checked.drawn) or "none"),
            _kinks_line(model),
            _prior_line(model),
            f"model hash: {model.model_hash}",
            ""]
    order = model.generation_order()
    moving = motion(model.sampling_schedule)  # given components are held clean: never noised
    out += ["# generation order (the reverse of noising: the component whose gamma is half-way "
            "latest in forward time is generated first; ties by mean true log-SNR)"] + _order_words(model, order, moving) + [""]
    generated = order[~moving.never_noised[order]]
    shown = generated if len(generated) else order
    picks = [int(shown[0]), int(shown[len(shown) // 2]), int(shown[-1])]
    ts = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    with torch.no_grad():
        gamma = model.sampling_path.gamma_and_slope(ts)[0].numpy()
    # with a path or drawn params, the training gamma at the same t beside it (t ~ U(0, 1): its
    # quantiles), over the drawn params' ranges when there are any (the table is at their means)
    drawn = bool(model.checked.drawn_ranges)
    trained = training_range(model, ts) if model.path is not None or drawn else None
    wvar = model.features["wvar"]
    along = "on the sampling path " if trained is not None else ""
    over = ", lowest to highest over the drawn params' ranges" if drawn else ""
    out.append(f"# gamma, sigma and true SNR = wvar * exp(-gamma) {along}(first, middle, last generated)"
               + (f"; training: gamma(t) at the same t{over}, t ~ U(0, 1) in training" if trained is not None else ""))
    width = 17 if drawn else 9
    out.append(f"{'component':>10} {'t':>5} {'gamma':>9} {'sigma':>9} {'true SNR':>10}"
               + (f" {'training':>{width}}" if trained is not None else ""))
    for i in picks:
        for k, t in enumerate(ts.tolist()):
            g = gamma[k, i]
            sigma = float(np.sqrt(1.0 / (1.0 + np.exp(-g))))
            snr = float(wvar[i] * np.exp(-g))
            seen = ""
            if trained is not None:
                lo, hi = trained[0][k, i], trained[1][k, i]
                seen = f" {f'{lo:.3f}..{hi:.3f}':>{width}}" if drawn else f" {lo:>9.3f}"
            out.append(f"{i:>10} {t:>5.2f} {g:>9.3f} {sigma:>9.4f} {snr:>10.3g}{seen}")
    out.append("")
    for w in model.warnings:
        out.append(f"warning[{w.code}]: {w.message}")
    if model.warnings:
        out.append("")
    out += ["# generated schedule code (c*: per-component constants, p_*: drawn params)",
            model.schedule.source.rstrip()]
    for name, module in (("sampling path", model.path), ("loss weight", model.weight)):
        if module is not None:
            out += ["", f"# generated {name} code", module.source.rstrip()]
    return "\n".join(out) + "\n"


# A component is in motion while its true |log SNR| is below SIGNAL_LOG_SNR, clean above it. With
# fewer than FEW_IN_MOTION of the (t, component) pairs training draws in motion and no loss
# weight, explain suggests snr_weight (README, "Strong hierarchies and the loss weight").
SIGNAL_LOG_SNR = 3.0
FEW_IN_MOTION = 0.2


def training_signal(model, points: int = 1025) -> tuple[float, float]:
    """(in motion, clean): the shares of the (t, component) pairs training draws, t ~ U(0, 1) on
    `points` equally spaced t and the components not given, whose true log SNR (log wvar_i -
    gamma_i(t), drawn params at their defaults) is within +-SIGNAL_LOG_SNR, and above it."""
    with torch.no_grad():
        gamma = model.schedule(torch.linspace(0, 1, points, dtype=torch.float64))[0].numpy()
    log_snr = np.log(np.asarray(model.features["wvar"], dtype=np.float64))[None] - gamma
    if model.given is not None:
        log_snr = log_snr[:, ~np.asarray(model.given, dtype=bool)]
    return (float(np.mean(np.abs(log_snr) < SIGNAL_LOG_SNR)), float(np.mean(log_snr >= SIGNAL_LOG_SNR)))


def _signal_line(model) -> str:
    moving, clean = training_signal(model)
    hint = ("; few: try weight_i(t) = snr_weight(gamma_i(t)), which drops the clean ones' unpredictable eps-loss, "
            "and a bias b > 0 if the samples lose contrast (README: strong hierarchies and the loss weight)"
            if moving < FEW_IN_MOTION and model.weight is None else "")
    return (f"signal:    {_share(moving)} of the (t, component) pairs training draws in motion (true |log SNR| < "
            f"{SIGNAL_LOG_SNR:g}), {_share(clean)} clean{hint}")


def _share(x: float) -> str:
    """A share as a percentage, to a tenth of a percent below 1%."""
    return f"{x:.0%}" if x >= 0.01 or x == 0 else f"{x:.1%}"


def _prior_line(model) -> str:
    """How far the noised data at t = 1 are from the prior sampling starts from (W303's number)."""
    from gudlang.pipeline import _never_noised
    from gudlang.schedules import PRIOR_BITS, prior_mismatch
    with torch.no_grad():
        gamma1 = model.sampling_schedule(torch.ones(1, dtype=torch.float64))[0].numpy()[0]
    kl, _ = prior_mismatch(gamma1, np.log(np.asarray(model.features["wvar"], dtype=np.float64)),
                           ~_never_noised(model.stats, model.given))
    return (f"at t = 1:   KL(p_1 || N(0, I)) = {kl.mean() / np.log(2):.3g} bits/dim (Gaussian, from the data's "
            f"variances; sampling starts from N(0, I); W303 above {PRIOR_BITS:g})")


def _kinks_line(model) -> str:
    """How many kinks (a component starts or stops moving) the sampling path has."""
    from gudlang.samplers import schedule_kinks
    kinks = schedule_kinks(model.sampling_schedule)
    if not kinks:
        return "kinks:     none (every component's dgamma/dt is continuous)"
    return (f"kinks:     {len(kinks)} in t = {kinks[0]:.4g} .. {kinks[-1]:.4g} (a component starts or stops "
            f"moving; the adaptive sampler and the likelihood split there)")


# Values per drawn param at which `training_range` evaluates the schedule (over all of them at once).
TRAINING_RANGE_POINTS = 65


def training_range(model, ts: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) training gamma, each (len(ts), D), at the times `ts`: over a grid of
    the drawn params' ranges (every group of a param drawn per component at the same value,
    which spans each component's own range), or gamma itself twice when nothing is drawn.
    Given components read as the schedule holds them (clean)."""
    import itertools

    ranges = model.checked.drawn_ranges
    schedule = model.conditioned_schedule
    with torch.no_grad():
        if not ranges:
            gamma = schedule(ts)[0].numpy()
            return gamma, gamma
        per_axis = max(2, round(TRAINING_RANGE_POINTS ** (1.0 / len(ranges))))
        axes = [np.linspace(lo, hi, per_axis) for lo, hi in ranges.values()]
        low = np.full((len(ts), model.dim), np.inf)
        high = np.full((len(ts), model.dim), -np.inf)
        for values in itertools.product(*axes):
            params = {name: torch.full((len(ts), model.dim) if name in model.groups else (len(ts),), v,
                                       dtype=torch.float64) for name, v in zip(ranges, values)}
            gamma = schedule(ts, params)[0].numpy()
            low, high = np.minimum(low, gamma), np.maximum(high, gamma)
    return low, high


def _drawn_how(model, name: str) -> str:
    """How a drawn param is drawn in training and what it is when sampling."""
    p = model.spec.params[name]
    if name not in model.groups:
        return f"shown at its mean {p.mean:g} (pick a member with -s {name}=...)"
    groups = int(model.groups[name].max()) + 1
    return f"drawn per example and per group of components ({groups} group{'s' if groups != 1 else ''})"
