"""Compiled schedules against independent NumPy formulas (float64), the soft-conditioning
family's promises, generation order, and the compile-time numeric checks."""

import numpy as np
import pytest
import torch
from torch.func import jvp

from gudlang.check import check_text
from gudlang.diagnostics import GudError
from gudlang.schedules import check_schedule, compile_schedule, generation_order

D = 48
RNG = np.random.default_rng(0)
VAR = np.sort(RNG.uniform(0.01, 3.0, D))[::-1].copy()
T = np.linspace(0.0, 1.0, 101)
# pixel-like features of a 1 x 6 x 8 image
ROWS, COLS = np.divmod(np.arange(D), 8)
FEATURES = {"var": VAR, "wvar": VAR, "rank": np.arange(D) / (D - 1), "row": ROWS / 5.0,
            "col": COLS / 7.0, "chan": np.zeros(D), "freq": RNG.uniform(0, 1, D),
            "level": np.minimum(np.arange(D) // 12, 3).astype(float)}


def compiled(gamma: str, params: str = "", basis: str = "pixel", features=None):
    text = f"gud 1\ndata = digits()\nbasis = {basis}()\n{params}\ngamma_i(t) = {gamma}\n"
    checked = check_text(text, "test.gud")
    drawn = {n: checked.spec.params[n].mean for n in checked.drawn}
    return compile_schedule(checked.gamma, features or FEATURES, checked.fixed_params, drawn, D), checked


def evaluate(schedule, t=T, params=None):
    with torch.no_grad():
        gamma, beta = schedule(torch.as_tensor(t, dtype=torch.float64), params)
        _, slope = schedule.gamma_and_slope(torch.as_tensor(t, dtype=torch.float64), params)
    return gamma.numpy(), beta.numpy(), slope.numpy()


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def clip01(x):
    return np.clip(x, 0.0, 1.0)


# --------------------------------------------------------------------------- library schedules
def test_linear_matches_numpy():
    s, _ = compiled("linear(2*t - rank(i), lo = -9, hi = 4)")
    g, beta, _ = evaluate(s)
    u = 2 * T[:, None] - FEATURES["rank"][None, :]
    ref = -9 + 13 * clip01(u)
    np.testing.assert_allclose(g, ref, rtol=0, atol=1e-12)
    inside = (u > 0) & (u < 1)
    np.testing.assert_allclose(beta[inside], (sigmoid(ref) * 26)[inside], rtol=1e-12)
    assert np.all(beta[(u < 0) | (u > 1)] == 0)


def test_vp_matches_ddpm_definition():
    s, _ = compiled("vp(t, b_min = 0.1, b_max = 20)")
    g, beta, _ = evaluate(s)
    tp = 0.001 + 0.999 * T
    integral = 0.1 * tp + 0.5 * (20 - 0.1) * tp ** 2
    sigma2 = 1 - np.exp(-integral)
    np.testing.assert_allclose(g[:, 0], np.log(sigma2) - np.log1p(-sigma2), rtol=1e-9)
    # beta of the whitened process is the DDPM beta(t') times dt'/dt
    np.testing.assert_allclose(beta[:, 0], (0.1 + (20 - 0.1) * tp) * 0.999, rtol=1e-9)


def test_cosine_matches_alpha_cos_squared():
    s, _ = compiled("cosine(t, s = 0.008, hi = 10)")
    g, _, _ = evaluate(s)
    th0 = 0.008 / 1.008 * np.pi / 2
    th1 = np.arctan(np.exp(5.0))
    alpha2 = np.cos(th0 + T * (th1 - th0)) ** 2
    np.testing.assert_allclose(g[:, 0], np.log1p(-alpha2) - np.log(alpha2), rtol=1e-9, atol=1e-9)
    assert abs(g[-1, 0] - 10) < 1e-9
    # at t = 0 this is the original cosine schedule's angle
    assert abs(alpha2[0] - np.cos((0.008 / 1.008) * np.pi / 2) ** 2) < 1e-15


def soft_reference(t, label, wvar, a, g_den=-7.0, g_noise=3.0, clipped=False):
    lmax, lmin = label.max(), label.min()
    line = g_den + a * (label[None] - lmax) + t[:, None] * (g_noise - g_den + a * (lmax - lmin))
    if clipped:
        line = np.clip(line, g_den, g_noise)
    return np.log(wvar)[None] + line


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("clipped", [False, True])
def test_soft_matches_the_paper_formula(a, clipped):
    s, _ = compiled(f"soft(t, l_i, a = {a}, clipped = {'true' if clipped else 'false'})",
                    "l_i = -log(var(i))")
    g, _, _ = evaluate(s)
    np.testing.assert_allclose(g, soft_reference(T, -np.log(VAR), VAR, a, clipped=clipped), rtol=0, atol=1e-10)


def test_soft_at_a1_with_log_variance_label_is_standard_diffusion():
    s, _ = compiled("soft(t, l_i, a = 1)", "l_i = -log(var(i))")
    g, _, _ = evaluate(s)
    # one scalar gamma for every component: standard diffusion with a white prior
    scalar = -7 + np.log(VAR.min()) + T * (10 + np.log(VAR.max()) - np.log(VAR.min()))
    np.testing.assert_allclose(g, np.repeat(scalar[:, None], D, axis=1), atol=1e-10)
    true_log_snr = np.log(VAR)[None] - g
    np.testing.assert_allclose(true_log_snr, np.log(VAR)[None] - scalar[:, None], atol=1e-10)


def test_soft_at_a0_gives_every_component_the_same_true_snr():
    s, _ = compiled("soft(t, l_i, a = 0)", "l_i = -log(var(i))")
    g, _, _ = evaluate(s)
    log_snr = np.log(VAR)[None] - g
    np.testing.assert_allclose(log_snr, np.repeat(log_snr[:, :1], D, axis=1), atol=1e-10)


@pytest.mark.parametrize("a", [0.0, 0.7, 1.0, 3.0])
def test_soft_snr_targets_are_met(a):
    s, _ = compiled(f"soft(t, l_i, a = {a}, g_den = -6, g_noise = 4)", "l_i = -log(var(i))")
    g, _, _ = evaluate(s, np.array([0.0, 1.0]))
    log_snr = np.log(VAR)[None] - g
    assert np.all(log_snr[0] >= 6 - 1e-10)
    assert np.all(log_snr[1] <= -4 + 1e-10)


def test_clipped_soft_with_large_a_is_autoregressive_in_label_order():
    label = FEATURES["rank"]
    s, _ = compiled("soft(t, rank(i), a = 600, clipped = true)")
    t = np.linspace(0, 1, 20001)
    _, beta, _ = evaluate(s, t)
    active = beta > 0
    starts = np.array([t[active[:, i]].min() for i in range(D)])
    ends = np.array([t[active[:, i]].max() for i in range(D)])
    order = np.argsort(starts)
    # higher label = noised earlier: forward time visits labels in decreasing order
    assert np.array_equal(order, np.argsort(-label, kind="stable"))
    # a * (label spacing) = 600 / 47 > g_noise - g_den = 10: the windows are disjoint
    assert np.all(ends[order][:-1] <= starts[order][1:] + 1e-4)


def test_sequential_generates_the_left_column_first():
    s, _ = compiled("sequential(t, col(i), b = 0.3)")
    order = generation_order(s, VAR * 0 + 1.0)
    first, last = order[:6], order[-6:]
    assert np.all(FEATURES["col"][first] == 0.0)
    assert np.all(FEATURES["col"][last] == 1.0)
    g, _, _ = evaluate(s)
    np.testing.assert_allclose(g, -7 + 10 * clip01((T[:, None] - (1 - FEATURES["col"][None]) * 0.7) / 0.3),
                               atol=1e-12)


def test_design_card_line_noises_rank_zero_first():
    s, checked = compiled("linear(a*t - b*rank(i))", "param a = 2\nparam b = 1")
    assert checked.fixed_params == {"a": 2.0, "b": 1.0}
    g, _, _ = evaluate(s)
    u = 2 * T[:, None] - FEATURES["rank"][None]
    np.testing.assert_allclose(g, -13.3 + 18.3 * clip01(u), atol=1e-12)
    order = generation_order(s, np.ones(D))
    assert order[-1] == 0 and order[0] == D - 1  # rank 0 is noised first, generated last


# --------------------------------------------------------------------------- derivatives
@pytest.mark.parametrize("gamma,params", [
    ("vp(t)", ""), ("cosine(t)", ""), ("linear(t)", ""),
    ("soft(t, l_i, a = 1.3)", "l_i = -log(var(i))"),
    ("log(exp(3*t) + var(i)) + sqrt(1 + t^2) * sigmoid(t - rank(i)) + softplus(t)^1.5", ""),
    ("where(t < 0.5, 4*t, 2 + 8*(t - 0.5)) + tanh(t) + atan(t * var(i)) + log1p(t) + expm1(t)", ""),
    ("max(t, rank(i)) + min(2*t, 1) + abs(t - 0.3) + t * mean(var(i)) + sum(rank(i)) * t / 100", ""),
    ("(1 + t)^(1 + t) + logit(0.1 + 0.8*t) + sin(t) - cos(t) + tan(t/2)", ""),
    ("ndtri(0.05 + 0.9*t) + erfinv(1.6*t - 0.8) * var(i) + floor(4*t) + round(3*t - rank(i)) + t", ""),
])
def test_beta_equals_forward_mode_autodiff(gamma, params):
    s, _ = compiled(gamma, params)
    t = torch.tensor(np.random.default_rng(1).uniform(0.01, 0.99, 64), dtype=torch.float64)
    gam, beta = s(t)
    _, dgamma = jvp(lambda tt: s(tt)[0], (t,), (torch.ones_like(t),))
    np.testing.assert_allclose(beta.numpy(), (torch.sigmoid(gam) * dgamma).numpy(), rtol=1e-10, atol=1e-12)


def test_shape_constants_are_substituted_from_the_features():
    from gudlang.builtins import shape_constants
    features = {**FEATURES, **shape_constants((3, 4, 4))}
    s, checked = compiled("linear(t) + 2 * log(H / 64) + D / (C * H * W) + 0 * t * W", features=features)
    assert checked.gamma_shape == frozenset("t")
    assert "p_" not in s.source  # numbers, not params
    g, _, _ = evaluate(s)
    np.testing.assert_allclose(g, -13.3 + 18.3 * T[:, None] + 2 * np.log(4 / 64) + 1 + 0 * VAR, atol=1e-12)
    with pytest.raises(ValueError, match="shape constant H"):
        compiled("linear(t) + H")  # a caller that forgot them: an error, not a schedule of p_H


def test_drawn_params_take_one_value_per_example():
    s, checked = compiled("linear(b*t - 0.5*rank(i))", "param b ~ uniform(1.5, 2.5)")
    assert checked.drawn == ("b",)
    b = torch.tensor([1.5, 2.0, 2.5], dtype=torch.float64)
    t = torch.tensor([0.4, 0.4, 0.4], dtype=torch.float64)
    g, _ = s(t, {"b": b})
    ref = -13.3 + 18.3 * clip01(b.numpy()[:, None] * 0.4 - 0.5 * FEATURES["rank"][None])
    np.testing.assert_allclose(g.numpy(), ref, atol=1e-12)
    g_default, _ = s(t)  # default: the distribution's mean
    np.testing.assert_allclose(g_default.numpy(), np.repeat(ref[1:2], 3, axis=0), atol=1e-12)


def test_float32_agrees_with_float64():
    s, _ = compiled("soft(t, l_i, a = 2)", "l_i = -log(var(i))")
    t = torch.rand(32, dtype=torch.float64)
    g64, b64 = s(t)
    g32, b32 = s.to(torch.float32)(t.float())
    assert g32.dtype == torch.float32
    np.testing.assert_allclose(g32.numpy(), g64.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b32.numpy(), b64.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    s, _ = compiled("soft(t, l_i, a = 2)", "l_i = -log(var(i))")
    t = torch.rand(16, dtype=torch.float64)
    g_cpu, b_cpu = s(t)
    g_gpu, b_gpu = s.to("cuda")(t.cuda())
    np.testing.assert_allclose(g_gpu.cpu().numpy(), g_cpu.numpy(), atol=1e-10)


@pytest.mark.slow
def test_runs_under_torch_compile():
    s, _ = compiled("soft(t, l_i, a = 2, clipped = true)", "l_i = -log(var(i))")
    s = s.to(torch.float32)
    fast = torch.compile(s)
    t = torch.rand(16)
    g, b = fast(t)
    g_ref, b_ref = s(t)
    np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), b_ref.numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- numeric checks
def test_decreasing_gamma_is_an_error_naming_component_and_time():
    s, _ = compiled("linear(t) - 20*t*rank(i)")
    with pytest.raises(GudError) as info:
        check_schedule(s, VAR, {})
    d = info.value.diagnostics[0]
    assert d.code == "E301" and "component" in d.message and "t = 0.000" in d.message


def test_non_finite_gamma_is_an_error():
    s, _ = compiled("log(t - 0.5) + t")
    with pytest.raises(GudError) as info:
        check_schedule(s, VAR, {})
    assert info.value.diagnostics[0].code == "E302"


def test_snr_coverage_warns_with_numbers():
    s, _ = compiled("linear(t, lo = -1, hi = 0)")
    warnings = check_schedule(s, VAR, {})
    assert {w.code for w in warnings} == {"W301", "W302"}
    assert all(w.severity == "warning" for w in warnings)
    assert "true SNR" in warnings[0].message


def test_drawn_param_ranges_are_checked_at_their_ends():
    s, _ = compiled("linear(b*t - 0.5*rank(i))", "param b ~ uniform(0.2, 2)")
    warnings = check_schedule(s, VAR, {"b": (0.2, 2.0)})
    assert any("b = 0.2" in w.message for w in warnings)


@pytest.mark.parametrize("gamma,params", [
    ("linear(t) + 0.1 * sin(2000 * pi * t)", ""),  # periodic with the uniform grid: aliases with it
    ("linear(t) - 5 * exp(-((t - 0.3005) / 0.0001)^2)", ""),  # a dip narrower than the uniform grid
    ("-7 + 10 * t * cos(pi * a) + log(wvar(i))", "param a ~ uniform(0, 4)"),  # fine at a = 0, 2, 4 only
])
def test_decreases_between_uniform_grid_points_or_param_values_are_found(gamma, params):
    s, checked = compiled(gamma, params)
    ranges = {n: (checked.spec.params[n].lo, checked.spec.params[n].hi) for n in checked.drawn}
    with pytest.raises(GudError) as info:
        check_schedule(s, VAR, ranges)
    assert info.value.diagnostics[0].code == "E301"


# --------------------------------------------------------------------------- float64 inside
def test_schedule_computes_in_float64_whatever_its_dtype_and_returns_the_dtype_of_t():
    s, _ = compiled("log(expm1(1e-50 + 20 * t))")  # 1e-50 is 0 in float32: log(0) = -inf there
    s = s.to(torch.float32)
    assert all(b.dtype == torch.float64 for b in s.buffers())
    t = torch.tensor([0.0, 0.5, 1.0])
    g32, b32 = s(t)
    g64, b64 = s(t.double())
    assert g32.dtype == b32.dtype == torch.float32 and g64.dtype == b64.dtype == torch.float64
    assert torch.isfinite(g32).all() and torch.isfinite(b32).all()
    assert abs(g64[0, 0].item() - np.log(np.expm1(1e-50))) < 1e-12
    assert torch.equal(g32, g64.float()) and torch.equal(b32, b64.float())
    g16, _ = s.half()(t.to(torch.bfloat16))
    assert g16.dtype == torch.bfloat16 and all(b.dtype == torch.float64 for b in s.buffers())


def test_moving_the_schedule_moves_its_buffers_and_keeps_them_float64():
    s, _ = compiled("soft(t, l_i, a = 2)", "l_i = -log(var(i))")
    s.to(device="meta", dtype=torch.float32)
    assert all(b.device.type == "meta" and b.dtype == torch.float64 for b in s.buffers())


def test_values_beyond_float32_are_E302():
    for gamma, name in (("1e39 + t", "gamma"), ("atan(1e40 * t)", "beta")):
        s, _ = compiled(gamma)
        with pytest.raises(GudError) as info:
            check_schedule(s, VAR, {})
        d = info.value.diagnostics[0]
        assert d.code == "E302" and d.message.startswith(f"{name} is") and "float32" in d.message
        assert "component 0" in d.message and "t = 0.000" in d.message


# --------------------------------------------------------------------------- drawn params
def test_warnings_come_once_per_code_at_the_worst_param_values():
    s, checked = compiled("linear(t, lo = -2 - b - c, hi = 3 - d)",
                          "param b ~ uniform(0, 2)\nparam c ~ uniform(0, 1)\nparam d ~ uniform(0, 4)")
    ranges = {n: (checked.spec.params[n].lo, checked.spec.params[n].hi) for n in checked.drawn}
    warnings = check_schedule(s, VAR, ranges)
    assert [w.code for w in warnings] == ["W301", "W302"]
    # the highest gamma at t = 0 is at b = c = 0; the lowest at t = 1 at d = 4
    assert "with b = 0, c = 0," in warnings[0].message
    assert "at t = 1 with b = 0, c = 0, d = 4, component" in warnings[1].message


@pytest.mark.parametrize("n", [3, 5])
def test_param_values_cover_the_box(n):
    from gudlang.schedules import ALL_CORNERS_UP_TO, _param_values
    ranges = {f"p{k}": (float(k), k + 1.0) for k in range(n)}
    values = np.array(_param_values(ranges))
    assert values == pytest.approx(np.array(_param_values(ranges)))  # the same every time
    lo, hi = np.arange(n), np.arange(n) + 1.0
    assert np.all((values >= lo) & (values <= hi))
    corners = {tuple(c) for c in values if np.all((c == lo) | (c == hi))}
    assert len(corners) == (2 ** n if n <= ALL_CORNERS_UP_TO else 2)
    assert any(np.allclose(v, lo + 0.5) for v in values)  # the centre
    for j in range(n):  # each param at both ends with the others at their centres
        others = np.delete(values, j, axis=1)
        at_centre = np.all(np.isclose(others, np.delete(lo + 0.5, j)), axis=1)
        assert {lo[j], hi[j]} <= set(values[at_centre, j])


def test_twenty_drawn_params_are_checked_in_seconds():
    import time
    names = [f"p{k}" for k in range(20)]
    params = "\n".join(f"param {n} ~ uniform(0.5, 1.5)" for n in names)
    s, checked = compiled("linear(" + " + ".join(f"{n} * t / 20" for n in names) + " - 0.3 * rank(i), lo = -3)",
                          params)
    ranges = {n: (checked.spec.params[n].lo, checked.spec.params[n].hi) for n in checked.drawn}
    start = time.perf_counter()
    warnings = check_schedule(s, VAR, ranges)
    assert time.perf_counter() - start < 10.0
    assert [w.code for w in warnings].count("W301") == 1


def test_a_decrease_at_one_corner_of_many_params_is_found():
    names = [f"p{k}" for k in range(6)]
    params = "\n".join(f"param {n} ~ uniform(0, 1)" for n in names)
    # gamma falls only where every param is near 1: at the corner all-hi
    s, checked = compiled("linear(t) - 60 * t * clip(" + " + ".join(names) + " - 5.5, 0, 1)", params)
    ranges = {n: (0.0, 1.0) for n in checked.drawn}
    with pytest.raises(GudError) as info:
        check_schedule(s, VAR, ranges)
    assert info.value.diagnostics[0].code == "E301" and "p5 = 1" in info.value.diagnostics[0].message


# --------------------------------------------------------------------------- motion
def test_motion_counts_components_between_their_ends_and_finds_those_that_never_move():
    from gudlang.schedules import motion
    # components with rank < 0.5 follow one clipped line; the others never move
    s, _ = compiled("where(rank(i) < 0.5, linear(3 * t - 1), -10 + 0 * t)")
    m = motion(s)
    never = FEATURES["rank"] >= 0.5
    assert np.array_equal(m.never_noised, never)
    most, when = m.busiest
    assert most == int((~never).sum()) and 1 / 3 <= when <= 2 / 3
    moving_at = m.in_motion[:, ~never].all(axis=1)
    # in motion strictly inside (1/3, 2/3); the times are cell midpoints, never the kinks
    inside = (m.times > 1 / 3) & (m.times < 2 / 3)
    assert np.array_equal(moving_at, inside) and not m.in_motion[:, never].any()


@pytest.mark.parametrize("b,columns", [(0.5, 7), (0.125, 1)])
def test_column_windows_that_meet_at_a_grid_time_do_not_count_twice(b, columns):
    # sequential(t, col(i), b): column c moves during [(1 - c/7)(1 - b), + b]. At b = 0.125 the
    # windows are back to back (one column at a time); at t = 0.5, a time of a uniform grid,
    # a column starts as another stops: counting both (clip's derivative at both ends) said
    # 16 in motion, and 64 of 64 at b = 0.5
    from gudlang.schedules import motion
    s, _ = compiled(f"sequential(t, col(i), b = {b})")
    per_column = int(np.sum(FEATURES["col"] == FEATURES["col"][0]))
    assert motion(s).busiest[0] == columns * per_column


def test_clipped_soft_with_a_above_the_label_spacing_moves_one_component_at_a_time():
    from gudlang.schedules import motion
    # labels 1/47 apart: a / 47 > g_noise - g_den = 10 makes the windows disjoint
    s, _ = compiled("soft(t, rank(i), a = 480, clipped = true)")
    assert motion(s).busiest[0] == 1
    s, _ = compiled("soft(t, rank(i), a = 50, clipped = true)")
    assert motion(s).busiest[0] == 10  # about 10 / (50 / 47) at once


# --------------------------------------------------------------------------- what float32 sampling can take
def test_gamma_beyond_80_is_E302_where_float32_sampling_overflows():
    s, _ = compiled("linear(t, -13, 200)")
    with pytest.raises(GudError) as info:
        check_schedule(s, VAR, {})
    d = info.value.diagnostics[0]
    assert d.code == "E302" and "beyond +-80" in d.message and "component 0" in d.message
    s, _ = compiled("linear(t, -13, 79)")
    check_schedule(s, VAR, {})


@pytest.mark.parametrize("gamma, where", [
    ("where(t < 0.5, -10, 5)", "t = 0.4992 and 0.5000"),
    ("-10 + 2 * floor(8 * t)", "and 0.1250"),            # a staircase: its first step
    ("where(t > 0, -10 + 20 * t, -20)", "from -20 to -9.985 between t = 0.0000 and"),  # t = 0 alone is off
    ("where(t < 0.3, -10 + t, 5 + t) + 0 * var(i)", "and 0.3000"),
])
def test_a_gamma_that_jumps_is_E305(gamma, where):
    # the samplers and the likelihood integrate dgamma/dt, which is blind to a jump
    s, _ = compiled(gamma)
    with pytest.raises(GudError) as info:
        check_schedule(s, VAR, {})
    d = info.value.diagnostics[0]
    assert d.code == "E305" and "gamma jumps from" in d.message and where in d.message, d.message


@pytest.mark.parametrize("gamma", [
    "clip(2 * (-1.2 + 1.2 * ndtri(t)), -24, 20)",  # EDM's log-normal: -24 at t = 0, -21 at t = 1e-15
    "clip(1000 * (t - 0.5), -10, 10)",             # a ramp 0.02 wide: steep, not a jump
    "-10 + 20 * sqrt(t + 1e-12)",                   # a slope of 1e7 at t = 0
    "linear(t)",
    "log(expm1(1e-4 + 10 * t))",                    # a log that falls steeply towards t = 0
])
def test_steep_but_continuous_gammas_are_not_jumps(gamma):
    s, _ = compiled(gamma)
    check_schedule(s, VAR, {})


# --------------------------------------------------------------------------- the prior at t = 1
def test_w303_is_the_kl_of_the_exact_marginal_at_t1_from_the_prior():
    # soft with a = 0 and the white prior ends every component at true SNR e^-3, i.e. at gamma =
    # log wvar + 3: small-variance components end far below the prior's unit variance. The
    # warning's bits/dim must be the exact Gaussian KL(p_1 || N(0, I)) of the grf data (PCA:
    # whitened components uncorrelated up to the fit), computed here from the full moments.
    import re

    from gudlang.api import oracle_eps_model
    from gudlang.pipeline import build_model
    text = ("gud 1\ndata = grf(size = 8, slope = 5, n = 4000)\nbasis = pca()\nprior = white\n"
            "network = oracle()\ngamma_i(t) = soft(t, -log(var(i)), a = 0)\n")
    model = build_model(check_text(text, "w.gud"))
    (w,) = [w for w in model.warnings if w.code == "W303"]
    bits = float(re.search(r"a mismatch of ([\d.e-]+) bits/dim", w.message).group(1))
    oracle = oracle_eps_model(model)
    with torch.no_grad():
        gamma, _ = model.schedule(torch.ones(1, dtype=torch.float64))
        mean, cov = oracle.marginal(gamma)
    mean, cov = mean[0].numpy(), cov[0].numpy()
    d = len(mean)
    exact = 0.5 * (np.trace(cov) + mean @ mean - d - np.linalg.slogdet(cov)[1]) / d / np.log(2)
    assert bits == pytest.approx(exact, rel=0.05)
    assert exact > 0.1
    fixed = build_model(check_text(text.replace("a = 0)", "a = 0, g_noise = 3 - log(min(wvar(i))))"), "w.gud"))
    assert "W303" not in [w.code for w in fixed.warnings]


def test_e301_names_the_first_decrease_and_the_steepest():
    # the first decreasing component (in t, then index) is where it goes wrong; the steepest is
    # where to look when fixing a per-component formula
    s, _ = compiled("linear(t) - 2 * rank(i)^4 * t")  # slope 18.3 - 2 rank^4: never below 0
    check_schedule(s, VAR, {})
    s, _ = compiled("-10 + (1 - 3 * rank(i)) * t")  # decreasing where rank > 1/3, most at rank 1
    with pytest.raises(GudError) as info:
        check_schedule(s, VAR, {})
    d = info.value.diagnostics[0]
    first = int(np.argmax(FEATURES["rank"] > 1 / 3))
    last = int(np.argmax(FEATURES["rank"]))
    assert d.code == "E301" and d.message.startswith(f"gamma decreases in t for component {first} at t = 0.0000")
    assert d.message.endswith(f"; steepest: component {last} at t = 0.0000 (dgamma/dt = -2)")
