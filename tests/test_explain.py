"""`gud explain`'s account of the generation order: components that never move are reported as
never noised (not as generated first), and the most components in motion at once is shown;
its kinks, and with a sampling path the training gamma beside it (table and plot)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gudlang.check import check_file, check_text
from gudlang.explain import explain_text
from gudlang.pipeline import build_model

SPECS = Path(__file__).resolve().parent.parent / "specs"


def order_section(model) -> str:
    return explain_text(model).split("# generation order")[1].split("\n\n")[0]


def test_components_whose_gamma_never_moves_are_never_noised_not_first_generated():
    text = ("gud 1\ndata = digits()\nbasis = pixel()\nprior = white\n"
            "gamma_i(t) = where(col(i) < 0.5, linear(t), -13.3 + 0 * t)\n")
    model = build_model(check_text(text, "still.gud"))
    section = order_section(model)
    assert "never noised:    32 of 64 components (gamma constant in t)" in section
    for line in ("first generated", "then", "middle", "last generated"):
        i = int(re.search(rf"{line}: +component (\d+)", section).group(1))
        assert model.features["col"][i] < 0.5, line
    assert "most in motion:  32 of 64 components at once" in section


def test_the_autoregressive_spec_moves_one_component_at_a_time():
    section = order_section(build_model(check_file(str(SPECS / "autoregressive.gud"))))
    assert "never noised" not in section
    assert "most in motion:  1 of 64 components at once" in section


def test_given_components_are_listed_as_given_not_generated():
    model = build_model(check_file(str(SPECS / "inpainting.gud")))
    section = order_section(model)
    given = int(model.given.sum())
    assert f"given:           {given} of 64 components (given_i: known when sampling" in section
    assert "never noised" not in section
    first = int(re.search(r"first generated: +component (\d+)", section).group(1))
    assert not model.given[first]


def test_with_a_path_the_table_also_shows_the_training_distribution():
    # EDM trains on gamma = 2 (P_mean + P_std ndtri(t)), t ~ U(0, 1) (SciPy's quantile here), and
    # samples along its rho path; the table's last column is the training gamma at the same t.
    from scipy.stats import norm
    text = explain_text(build_model(check_file(str(SPECS / "peers" / "edm.gud"))))
    rows = [line.split() for line in text.split("true SNR  training\n")[1].split("\n\n")[0].splitlines()]
    for row in rows:
        t, training = float(row[1]), float(row[5])
        want = 2 * (-1.2 + 1.2 * norm.ppf(min(max(t, 1e-6), 1 - 1e-6)))
        assert abs(training - want) < 1e-3, row
    assert len(rows) == 15


def test_explain_counts_the_sampling_paths_kinks():
    # sequential(t, col(i), b = 0.5): column k of 8 moves over [(1 - k/7) / 2, (1 - k/7) / 2 + 1/2];
    # inside (0, 1) that is 7 starts and 7 ends, one time shared: 13 kinks, from 1/14 to 13/14.
    text = explain_text(build_model(check_file(str(SPECS / "sequential_columns.gud"))))
    assert "kinks:     13 in t = 0.07143 .. 0.9286" in text
    assert "kinks:     none" in explain_text(build_model(check_file(str(SPECS / "digits.gud"))))


def test_the_schedule_plot_of_a_path_draws_the_training_gamma_too():
    from gudlang.plot import schedule_figure
    model = build_model(check_file(str(SPECS / "peers" / "edm.gud")))
    ax = schedule_figure(model, pyplot=False).axes[0]
    dotted = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert 1 <= len(dotted) <= 3 and "training" in ax.get_legend().get_texts()[0].get_text()
    t, gamma = dotted[0].get_data()
    with torch.no_grad():
        want = model.schedule(torch.as_tensor(t))[0][:, 0].numpy()  # one scalar gamma for all
    np.testing.assert_allclose(gamma, want)
    plain = schedule_figure(build_model(check_file(str(SPECS / "digits.gud"))), pyplot=False).axes[0]
    assert not [line for line in plain.get_lines() if line.get_linestyle() == ":"]


def test_drawn_params_without_a_path_show_the_trained_range_beside_the_mean():
    # family.gud: a ~ U(0.4, 1.6) in soft(t, l_i, a); the table is at a = 1, the training column
    # the range over a. soft is linear in a at fixed t, so the extremes are at a = 0.4 and 1.6,
    # computed here from the library formula (g_den = -7, g_noise = 3 - log(min(wvar))) and the
    # features.
    model = build_model(check_file(str(SPECS / "family.gud")))
    text = explain_text(model)
    assert "lowest to highest over the drawn params' ranges" in text
    rows = [line.split() for line in text.split("true SNR          training\n")[1].split("\n\n")[0].splitlines()]
    label = -np.log(model.features["var"])
    span = 3 - np.log(model.features["wvar"].min()) + 7
    for row in rows:
        i, t = int(row[0]), float(row[1])
        ends = [np.log(model.features["wvar"][i]) - 7 + a * (label[i] - label.max())
                + t * (span + a * (label.max() - label.min())) for a in (0.4, 1.6)]
        lo, hi = map(float, row[5].split(".."))
        assert abs(lo - min(ends)) < 2e-3 and abs(hi - max(ends)) < 2e-3, row
    assert len(rows) == 15


def test_components_generated_together_or_in_no_order_are_said_to_be():
    # soft a = 0: every component has the same true-SNR path, so there is no order to show;
    # sequential columns: the first two listed are of the first column, noised as one
    section = order_section(build_model(check_file(str(SPECS / "soft_a0.gud"))))
    assert "no order:        all 64 generated components have the same true SNR at every t" in section
    section = order_section(build_model(check_file(str(SPECS / "sequential_columns.gud"))))
    assert "no order" not in section and "(its gamma is the first's: generated together)" in section
    section = order_section(build_model(check_file(str(SPECS / "autoregressive.gud"))))
    assert "no order" not in section and "generated together" not in section


def test_a_component_constant_in_the_data_is_said_to_be():
    # pixel 39 of the digits never varies in the train split: its variance is the floor, and
    # its "true SNR" is that of the floor, so explain says so where it names it
    model = build_model(check_file(str(SPECS / "sequential_columns.gud")))
    assert float(np.asarray(model.stats.var)[39]) == 0.0
    section = order_section(model)
    assert "component 39 (" in section and "constant in the data: var is the floor, 1e-05 of the largest" in section
    first = re.search(r"first generated: +(.*)", section).group(1)
    assert "constant in the data" not in first


def test_a_loss_weight_of_one_is_said_to_be_the_plain_loss():
    base = "gud 1\ndata = digits()\nbasis = pca()\nprior = white\ngamma(t) = linear(t)\n"
    plain = build_model(check_text(base + "weight(t) = 3 - 2\n", "w.gud"))
    assert plain.weight is None
    assert "loss:      weight 1, the plain loss" in explain_text(plain)
    weighted = build_model(check_text(base + "weight(t) = 1 + t\n", "w.gud"))
    assert weighted.weight is not None
    assert "loss:      weighted by weight (per-time)" in explain_text(weighted)


def test_the_training_signal_shares_are_those_of_the_soft_family_s_closed_form():
    """soft(t, l, a) is linear in the true log SNR, lambda_i(t) = 7 - a (l_i - l_max) - Dg t with
    Dg = 10 + a (l_max - l_min), from 7 - ... >= 7 at t = 0 to <= -3 at t = 1: each component is
    in motion (|lambda| < 3) for 6 / Dg of the time and clean (> 3) for (4 + a (l_max - l_i)) / Dg.
    l_i = -log var_i with var_i NumPy's PCA variances of the training images."""
    from gudlang.explain import training_signal
    a = 8.0  # the grf's labels span 3: Dg = 34, 18% in motion
    text = ("gud 1\ndata = grf(size = 6, slope = 2, n = 2000)\nbasis = pca()\nprior = white\n"
            f"gamma_i(t) = soft(t, -log(var(i)), a = {a})\n")
    model = build_model(check_text(text, "signal.gud"))
    x = model.data.train.reshape(len(model.data.train), -1).astype(np.float64)
    l = -np.log(np.linalg.eigvalsh(np.cov(x.T, bias=True)))
    dg = 10 + a * (l.max() - l.min())
    moving, clean = training_signal(model)
    assert moving == pytest.approx(6 / dg, abs=2e-3)
    assert clean == pytest.approx(np.mean((4 + a * (l.max() - l)) / dg), abs=2e-3)
    def signal_line(m) -> str:
        return re.search(r"^signal: .*$", explain_text(m), re.M).group(0)

    assert "snr_weight" in signal_line(model)  # few in motion, unweighted: the hint
    weighted = build_model(check_text(text + "weight_i(t) = snr_weight(gamma_i(t))\n", "signal.gud"))
    assert signal_line(weighted).startswith(f"signal:    {moving:.0%} of the (t, component) pairs")
    assert "snr_weight" not in signal_line(weighted)
    standard = build_model(check_text(text.replace(f"a = {a}", "a = 0.5"), "signal.gud"))
    assert training_signal(standard)[0] > 0.2 and "snr_weight" not in signal_line(standard)


def test_explain_gives_the_prior_mismatch_w303_warns_about():
    text = ("gud 1\ndata = grf(size = 8, slope = 5, n = 4000)\nbasis = pca()\nprior = white\n"
            "gamma_i(t) = soft(t, -log(var(i)), a = 0)\n")
    model = build_model(check_text(text, "w.gud"))
    (warning,) = [w for w in model.warnings if w.code == "W303"]
    warned = re.search(r"a mismatch of ([\d.e-]+) bits/dim", warning.message).group(1)
    shown = re.search(r"at t = 1: +KL\(p_1 \|\| N\(0, I\)\) = ([\d.e-]+) bits/dim", explain_text(model)).group(1)
    assert shown == warned and float(shown) > 0.1
