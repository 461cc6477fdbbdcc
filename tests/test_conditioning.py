"""Conditioning on given components, checked against the closed-form Gaussian conditional.

For Gaussian data N(m, C) in whitened components the conditional of the generated components g
given the known ones k is N(m_g + C_gk C_kk^-1 (c - m_k), C_gg - C_gk C_kk^-1 C_kg). A model
trained with a given mask holds the known components clean (`GivenSchedule`); its exact eps
model is the Gaussian oracle evaluated at the pinned noise levels, so sampling it from the exact
conditional t = 1 marginal must reproduce the conditional t = 0 marginal up to the sampler's
discretisation error, which falls with the steps. Deterministic samplers with the oracle are
affine maps, so their output moments come from the identity batch, without sampling noise.
"""

import numpy as np
import pytest
import torch

from gudlang.conditioning import GIVEN_GAMMA, GivenSchedule, ReplacementEpsModel, check_mask
from gudlang.diagnostics import GudError
from gudlang.oracle import GaussianOracle
from gudlang.oracle import gaussian_kl as kl
from gudlang.samplers import SAMPLERS
from schedule_fixtures import LinearSchedule, SoftSchedule, gaussian_data, one_thread  # noqa: F401

D = 16


def conditional(mean, cov, mask, known):
    """Closed-form N(mu_g|k, Sigma_g|k) (NumPy), known values c on the mask."""
    m, c = np.asarray(mean, float), np.asarray(cov, float)
    g, k = ~mask, mask
    gain = c[np.ix_(g, k)] @ np.linalg.inv(c[np.ix_(k, k)])
    return m[g] + gain @ (known[k] - m[k]), c[np.ix_(g, g)] - gain @ c[np.ix_(k, g)]


def marginal_given(oracle, schedule, t, mask, known):
    """The exact conditional of the generated components at time t, given the clean known
    values (their pinned noise level is part of the model)."""
    gamma, _ = schedule(torch.full((1,), t, dtype=torch.float64))
    mean, cov = oracle.marginal(gamma)
    return conditional(mean[0].numpy(), cov[0].numpy(), mask, known.numpy().reshape(-1))


def output_moments(method, oracle, schedule, mask, known, steps, **options):
    """Mean and covariance of the generated components after a deterministic sampler started
    from the exact conditional t = 1 marginal."""
    mu1, cov1 = marginal_given(oracle, schedule, 1.0, mask, known)
    g = torch.as_tensor(~mask)
    start = known.repeat(1 + int(g.sum()), 1)
    lin = np.linalg.cholesky(cov1)
    start[:, g] = torch.as_tensor(np.vstack([mu1, mu1 + lin.T]))
    out = SAMPLERS[method](oracle, schedule, start, steps, denoise=False, **options).x0
    if method == "adaptive":  # dopri5's dense output at t_end rounds
        torch.testing.assert_close(out[:, ~g], start[:, ~g], rtol=0, atol=1e-12)
    else:
        assert torch.equal(out[:, ~g], start[:, ~g]), "given components must come out unchanged"
    gen = out[:, g]
    lin_out = (gen[1:] - gen[0]).T
    return gen[0], lin_out @ lin_out.T


MASKS = {
    "first six": np.arange(D) < 6,
    "every other": np.arange(D) % 2 == 0,
    "last four": np.arange(D) >= 12,
}


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("base", ["linear", "soft"])
def test_trained_conditional_sampling_reaches_the_closed_form_conditional(name, base):
    mean, cov = gaussian_data(D)
    oracle = GaussianOracle(mean, cov)
    mask = MASKS[name]
    inner = LinearSchedule(D) if base == "linear" else SoftSchedule(torch.arange(D) / (D - 1))
    schedule = GivenSchedule(inner, mask)
    known = torch.as_tensor(np.random.default_rng(3).normal(size=D))[None]
    target = marginal_given(oracle, schedule, 0.0, mask, known)
    errors = []
    for steps in (10, 40):
        m, c = output_moments("heun", oracle, schedule, mask, known, steps)
        errors.append(kl(m, c, torch.as_tensor(target[0]), torch.as_tensor(target[1])))
    assert errors[1] < errors[0] / 8, errors  # second order: 16x in theory
    m, c = output_moments("adaptive", oracle, schedule, mask, known, 20, rtol=1e-9, atol=1e-9)
    assert kl(m, c, torch.as_tensor(target[0]), torch.as_tensor(target[1])) < 1e-8


def test_the_pinned_noise_level_leaves_the_data_conditional_unchanged():
    """At GIVEN_GAMMA the known components carry noise of sigma 3e-7: the t = 0 conditional the
    model reaches equals the data's own conditional to that precision."""
    mean, cov = gaussian_data(D)
    oracle = GaussianOracle(mean, cov)
    mask = MASKS["first six"]
    known = torch.as_tensor(np.random.default_rng(4).normal(size=D))[None]
    schedule = GivenSchedule(LinearSchedule(D, g_min=-40.0), mask)
    model_m, model_c = marginal_given(oracle, schedule, 0.0, mask, known)
    data_m, data_c = conditional(mean.numpy(), cov.numpy(), mask, known[0].numpy())
    np.testing.assert_allclose(model_m, data_m, atol=1e-6)
    np.testing.assert_allclose(model_c, data_c, atol=1e-6)


def test_given_schedule_pins_gamma_and_stops_beta_on_the_mask_only():
    mask = MASKS["every other"]
    inner = LinearSchedule(D)
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    gamma, beta = GivenSchedule(inner, mask)(t)
    g0, b0 = inner(t)
    assert (gamma[:, mask] == GIVEN_GAMMA).all() and (beta[:, mask] == 0).all()
    assert torch.equal(gamma[:, ~mask], g0[:, ~mask]) and torch.equal(beta[:, ~mask], b0[:, ~mask])


def test_replacement_conditioning_is_closer_to_but_not_the_exact_conditional():
    """Zero-shot replacement on the unconditional oracle moves the generated components most
    of the way from their marginal towards the conditional, and no further: the method is an
    approximation (here, strongly correlated data, it leaves several nats)."""
    mean, cov = gaussian_data(D)
    oracle = GaussianOracle(mean, cov)
    mask = MASKS["first six"]
    schedule = LinearSchedule(D)
    known = torch.as_tensor(np.random.default_rng(5).normal(size=D))[None]
    target = conditional(mean.numpy(), cov.numpy(), mask, known[0].numpy())
    n = 4000
    gen = torch.Generator().manual_seed(0)
    mask_t = torch.as_tensor(mask)
    eps_model = ReplacementEpsModel(oracle, mask_t, known.expand(n, D), gen)
    start = torch.where(mask_t, known, torch.randn(n, D, generator=gen, dtype=torch.float64))
    out = SAMPLERS["em"](eps_model, schedule, start, 200, generator=gen).x0[:, ~mask_t]
    divergence = kl(out.mean(0), torch.cov(out.T), torch.as_tensor(target[0]), torch.as_tensor(target[1]))
    uncond = kl(torch.as_tensor(mean.numpy()[~mask]), cov[~mask_t][:, ~mask_t],
                torch.as_tensor(target[0]), torch.as_tensor(target[1]))
    assert divergence < uncond / 3, (divergence, uncond)  # it conditions ...
    assert divergence > 0.5, divergence  # ... but not exactly (Monte Carlo error here ~0.02)


def test_masks_that_give_everything_or_nothing_are_refused():
    for mask in (np.ones(D, bool), np.zeros(D, bool)):
        with pytest.raises(GudError) as err:
            check_mask(mask)
        assert err.value.diagnostics[0].code == "E680"


# --------------------------------------------------------------------------- image extension
def _grf_model(given: str = "given_i = col(i) < 0.5"):
    from gudlang.check import check_text
    from gudlang.pipeline import build_model
    text = f"""gud 1
data = grf(size = 8, slope = 3, n = 200)
basis = pixel()
network = oracle()
{given}
gamma_i(t) = linear(t, lo = -10, hi = 8)
"""
    return build_model(check_text(text))


@pytest.mark.slow
def test_extension_of_a_stationary_field_keeps_the_field_covariance_across_windows():
    """Extend exact field samples by two windows with the exact conditional oracle: the
    covariance between any two columns of the second window (given band and generated band)
    equals the field's covariance at their distance (a periodic field of width 8)."""
    from gudlang.conditioning import complete, extend, extension_band
    from gudlang.api import oracle_eps_model
    model = _grf_model()
    k = extension_band(model.space, model.given, "columns")
    assert k == 4
    cov = np.asarray(model.data.cov)  # over flattened (row, col) pixels of one channel
    n = 3000
    rng = np.random.default_rng(0)
    mean = np.asarray(model.data.mean, dtype=np.float64).reshape(-1)
    fields = (mean + rng.normal(size=(n, 64)) @ np.linalg.cholesky(cov).T).reshape(n, 1, 8, 8)
    oracle = oracle_eps_model(model)
    seeds = iter(range(100))

    def fill(window):
        return complete(oracle, model.schedule, model.space, model.given, window, method="trained",
                        sampler="heun", steps=40, device="cpu", dtype=torch.float64, seed=next(seeds),
                        trained_mask=model.given)

    out, _ = extend(fields, 8, "columns", k, 8, fill)
    assert out.shape == (n, 1, 8, 16)
    second = out[:, 0, :, 8:16]  # window columns 8..15: 4 generated by window one, 4 by window two
    centred = second - second.mean(axis=0)
    grid = cov.reshape(8, 8, 8, 8)  # (row, col, row', col')
    for a in range(8):
        for b in range(a, 8):
            empirical = np.einsum("nr,ns->rs", centred[:, :, a], centred[:, :, b]) / (n - 1)
            np.testing.assert_allclose(empirical, grid[:, a, :, b], atol=0.1,
                                       err_msg=f"columns {a} and {b} of the second window")


def test_extension_needs_a_band_of_leading_columns():
    from gudlang.conditioning import extension_band
    model = _grf_model("given_i = col(i) > 0.5")
    with pytest.raises(GudError) as err:
        extension_band(model.space, model.given, "columns")
    assert err.value.diagnostics[0].code == "E682"
    assert extension_band(_grf_model("given_i = row(i) < 0.3").space,
                          _grf_model("given_i = row(i) < 0.3").given, "rows") == 3


@pytest.mark.parametrize("basis, mask", [
    ("pixel()", "not (row(i) > 0.25 and row(i) < 0.75 and col(i) > 0.25 and col(i) < 0.75)"),
    ("pixel()", "col(i) < 0.5"),
    ("wavelet(levels = 2)", "level(i) <= 1"),
    ("pca()", "rank(i) < 0.25"),
], ids=["pixel hole", "column band", "wavelet levels", "pca prefix"])
def test_trained_conditional_of_digits_covariance_converges_to_the_closed_form(basis, mask):
    """The masks users write, on a Gaussian with the covariance of the digits (whitened variances
    spanning orders of magnitude): the trained conditional's exact KL to the closed-form
    conditional falls like a second-order sampler's (benchmarks/conditioning.py prints the
    table, with replacement beside it)."""
    from gudlang.check import check_text
    from gudlang.pipeline import build_model
    text = f"gud 1\ndata = digits()\nbasis = {basis}\nprior = white\ngiven_i = {mask}\n" \
           "gamma(t) = linear(t, lo = -10, hi = 8)\n"
    model = build_model(check_text(text))
    x = model.data.train.reshape(len(model.data.train), -1).astype(np.float64)
    oracle = GaussianOracle(*model.space.moments(x.mean(0), np.cov(x.T)))
    schedule = GivenSchedule(model.schedule.to(torch.float64), model.given)
    known = torch.as_tensor(np.where(model.given, np.random.default_rng(0).multivariate_normal(
        oracle.mean.numpy(), oracle.cov.numpy()), 0.0))[None]
    target = [torch.as_tensor(v) for v in marginal_given(oracle, schedule, 0.0, model.given, known)]
    errors = [kl(*output_moments("heun", oracle, schedule, model.given, known, steps), *target) for steps in (25, 100)]
    assert errors[1] < errors[0] / 8 and errors[1] < 1e-3, errors


@pytest.mark.parametrize("axis", ["columns", "rows"])
def test_extension_stitches_each_window_after_the_last_known_band(axis):
    # a fill that writes, in its generated part, 100 * window number + the last known value
    from gudlang.conditioning import extend
    images = np.arange(2 * 1 * 6 * 6, dtype=np.float64).reshape(2, 1, 6, 6)
    along = 3 if axis == "columns" else 2
    seen = []

    def fill(window):
        seen.append(window.copy())
        done = window.copy()
        last = np.take(window, [1], axis=along)  # k = 2: the band's last line
        index = [slice(None)] * 4
        index[along] = slice(2, 6)
        done[tuple(index)] = 100 * len(seen) + last
        return done, 7

    out, calls = extend(images, 9, axis, 2, 6, fill)
    assert calls == 7 * 3 and out.shape[along] == 6 + 9  # ceil(9 / 4) windows, 12 made, 9 kept
    np.testing.assert_array_equal(np.take(out, range(6), axis=along), images)
    expected_first = 100 + np.take(images, [5], axis=along)
    np.testing.assert_array_equal(np.take(seen[0], [1], axis=along), np.take(images, [5], axis=along))
    np.testing.assert_array_equal(np.take(out, range(6, 10), axis=along),
                                  np.repeat(expected_first, 4, axis=along))
    np.testing.assert_array_equal(np.take(seen[1], [0, 1], axis=along), np.take(out, [8, 9], axis=along))
