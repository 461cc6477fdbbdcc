"""`gud nll` against closed forms: the Gaussian oracle's bits/dim equal the analytic
Gaussian NLL of the same images, and a trained run reports a finite, dequantised NLL."""

import json
import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from gudlang.check import check_text
from gudlang.cli import main
from gudlang.pipeline import load_spec_data

ORACLE = """gud 1
data = grf(size = 6, slope = 2, n = 600)
basis = {basis}
prior = {prior}
network = oracle()
gamma(t) = {gamma}
sample {{ rtol = 1e-6; atol = 1e-6 }}
"""


@pytest.mark.parametrize("basis,prior,gamma", [
    ("fourier()", "white", "linear(t, lo = -12, hi = 10)"),
    ("pca()", "matched", "linear(t, lo = -12, hi = 10)"),
    ("wavelet(\"haar\", levels = 1)", "white", "linear(t, lo = -12, hi = 10)"),
    # The cosine's angle reaches pi / 2 at t = 1.0044: gamma is NaN past it, so the likelihood
    # may evaluate the schedule only inside [0, 1].
    ("fourier()", "white", "cosine(t, s = 0.008, hi = 10)"),
])
def test_oracle_nll_equals_the_analytic_gaussian_nll(capsys, tmp_path, monkeypatch, basis, prior, gamma):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "oracle.gud"
    spec.write_text(ORACLE.format(basis=basis, prior=prior, gamma=gamma))
    assert main(["nll", str(spec), "-n", "32"]) == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "samples" / "oracle" / "nll-test.json").read_text())
    data = load_spec_data(check_text(spec.read_text(), str(spec)))
    x = data.test[:32].reshape(32, -1).astype(np.float64)
    logp = multivariate_normal(mean=np.asarray(data.mean).reshape(-1), cov=data.cov).logpdf(x)
    dim = x.shape[1]
    width = data.value_range[1] - data.value_range[0]  # continuous data: the whole range is the unit
    analytic = -(logp + dim * math.log(width)) / (dim * math.log(2))
    assert record["divergence"] == "exact" and record["n"] == 32
    assert abs(record["bits_per_dim"] - analytic.mean()) < 0.01


def test_nll_of_a_trained_run(capsys, tmp_path):
    spec = tmp_path / "tiny.gud"
    spec.write_text("""gud 1
data = digits()
basis = dct()
network = mlp(hidden = 32, depth = 1)
gamma(t) = linear(t)
train { steps = 5; batch = 8; sample_every = 0 }
sample { steps = 2; n = 2; rtol = 1e-3; atol = 1e-3 }
""")
    assert main(["train", "--quiet", str(spec), "--out", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    assert main(["nll", str(run), "-n", "4"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "dequantisation of 17 levels" in out
    record = json.loads((run / "nll-test.json").read_text())
    assert math.isfinite(record["bits_per_dim"]) and record["bits_per_dim"] > 0
    # The model's own NLL is not replaced by a quicker measurement, nor by one along another
    # path, with a param set or with the raw weights; `gud export` publishes only its own.
    assert main(["nll", str(run), "-n", "2"]) == 0
    assert f"{run / 'nll-test.json'} keeps the measurement on 4 images" in capsys.readouterr().out
    assert json.loads((run / "nll-test.json").read_text())["n"] == 4
    assert json.loads((run / "nll-test-n2.json").read_text())["n"] == 2
    for extra, shown in ((["--path", "linear(t^2)"], "path linear(t^2)"), (["--weights", "raw"], "raw weights")):
        assert main(["nll", str(run), "-n", "2", *extra]) == 0
        assert f"(not the model's own NLL: {shown})" in capsys.readouterr().out
    variants = [json.loads(p.read_text()) for p in run.glob("nll-test-*.json") if p.name != "nll-test-n2.json"]
    assert sorted((str(r["path"]), r["weights"]) for r in variants) == [("None", "raw"), ("linear(t^2)", "ema")]
    assert json.loads((run / "nll-test.json").read_text())["n"] == 4
    # images of the user's own in a file named test.npy: the split's record stays (it was replaced,
    # and exported as the model's NLL)
    (tmp_path / "mine").mkdir()
    np.save(tmp_path / "mine" / "test.npy", np.zeros((6, 1, 8, 8)))
    assert main(["nll", str(run), "--given", str(tmp_path / "mine" / "test.npy")]) == 0
    (given,) = run.glob("nll-given-test-*.json")
    assert json.loads(given.read_text())["n"] == 6 and json.loads((run / "nll-test.json").read_text())["n"] == 4
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["nll"]["n"] == 4 and "tiny.gud" in config["command"]
    # an export of the export, or of the run's checkpoint file, publishes the same (both were dropped)
    for source, name in ((tmp_path / "exported", "again"), (run / "checkpoint.safetensors", "from-file")):
        assert main(["export", str(source), str(tmp_path / name)]) == 0
        again = json.loads((tmp_path / name / "config.json").read_text())
        assert (again["nll"], again["command"]) == (config["nll"], config["command"])
    own = json.loads((run / "nll-test.json").read_text())
    for k, older in enumerate((dict(variants[0], n=9), dict(own, split=str(tmp_path / "mine" / "test.npy")))):
        (run / "nll-test.json").write_text(json.dumps(older))  # records from before the split and the given name
        assert main(["export", str(run), str(tmp_path / f"exported{k + 2}")]) == 0
        assert json.loads((tmp_path / f"exported{k + 2}" / "config.json").read_text())["nll"] is None


def test_probes_with_the_exact_divergence_are_a_usage_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "oracle.gud"
    spec.write_text("gud 1\ndata = grf(size = 4, n = 100)\nbasis = pixel()\nnetwork = oracle()\ngamma(t) = linear(t)\n")
    assert main(["nll", str(spec), "-n", "2", "--probes", "4"]) == 2  # D = 16: the exact trace by default
    assert "error[E003]" in capsys.readouterr().err
    assert main(["nll", str(spec), "-n", "2", "--probes", "4", "--divergence", "hutchinson"]) == 0


def test_an_nll_measured_before_a_resume_is_neither_kept_nor_published(capsys, tmp_path):
    spec = tmp_path / "tiny.gud"
    spec.write_text("gud 1\ndata = digits()\nbasis = dct()\nnetwork = mlp(hidden = 32, depth = 1)\n"
                    "gamma(t) = linear(t)\ntrain { steps = 4; batch = 8; sample_every = 0 }\n"
                    "sample { steps = 2; n = 2; rtol = 1e-3; atol = 1e-3 }\n")
    assert main(["train", "--quiet", str(spec), "--out", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert main(["nll", str(run), "-n", "4"]) == 0
    assert json.loads((run / "nll-test.json").read_text())["step"] == 4
    assert main(["train", "--quiet", "--resume", str(run), "-s", "train.steps=6"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), str(tmp_path / "e1")]) == 0
    assert "measured at step 4, the weights are of step 6: not published" in capsys.readouterr().err
    assert json.loads((tmp_path / "e1" / "config.json").read_text())["nll"] is None
    assert main(["nll", str(run), "-n", "2"]) == 0  # fewer images, but of the current weights: replaces
    assert json.loads((run / "nll-test.json").read_text())["step"] == 6
    assert main(["export", str(run), str(tmp_path / "e2")]) == 0
    assert json.loads((tmp_path / "e2" / "config.json").read_text())["nll"]["n"] == 2


def test_gud_nll_refuses_data_that_changed_since_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=rng.uniform(-1, 1, size=(40, 1, 4, 4)))
    spec = tmp_path / "npz.gud"
    spec.write_text('gud 1\ndata = npz("x.npz")\nbasis = pixel()\nnetwork = mlp(hidden = 16, depth = 1)\n'
                    "gamma(t) = linear(t)\ntrain { steps = 2; batch = 8; sample_every = 0 }\n")
    assert main(["train", "--quiet", str(spec), "--out", "runs"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    np.savez(tmp_path / "x.npz", x=-np.load(tmp_path / "x.npz")["x"])  # other data under the same name
    capsys.readouterr()
    assert main(["nll", str(run), "-n", "3"]) != 0
    assert "E641" in capsys.readouterr().err and not (run / "nll-test.json").exists()


def test_dequantisation_noise_is_per_image_however_the_images_are_split():
    # ranks measured their shards with their own seeds: the NLL changed with the number of ranks
    import torch

    from gudlang.likelihood import dequantise_images

    x = torch.linspace(-1, 1, 5 * 4).reshape(5, 1, 2, 2).double()
    whole = dequantise_images(x, 17, 2.0, seed=3)
    parts = torch.cat([dequantise_images(x[:2], 17, 2.0, seed=3), dequantise_images(x[2:], 17, 2.0, seed=3, first=2)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    assert 0 < float((whole - x).abs().max()) <= 1 / 16  # within half a level (width 2 / 16)
    assert not torch.equal(dequantise_images(x, 17, 2.0, seed=4), whole)


def small_oracle(tmp_path, monkeypatch, lines: str, data: str = "grf(size = 4, n = 100)"):
    """tmp_path/oracle.gud: an oracle spec of `data` in the pixel basis with `lines`; records go under tmp_path."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "oracle.gud"
    spec.write_text(f"gud 1\ndata = {data}\nbasis = pixel()\nnetwork = oracle()\n{lines}")
    return spec


def test_only_the_models_own_measurement_is_its_nll(capsys, tmp_path, monkeypatch):
    # a Hutchinson estimate, a solve at rtol 0.9 and (on a spec) another model's data each replaced
    # nll-test.json, which gud export publishes; rank 0's network calls were recorded as all of them
    spec = small_oracle(tmp_path, monkeypatch, "param a = 1\ngamma(t) = linear(a * t, lo = -10, hi = 10)\n")
    folder = tmp_path / "samples" / "oracle"
    assert main(["nll", str(spec), "-n", "4"]) == 0
    own = json.loads((folder / "nll-test.json").read_text())
    assert own["divergence"] == "exact" and own["probes"] is None
    for extra, said in ((["--divergence", "hutchinson"], "divergence hutchinson"),
                        (["--divergence", "hutchinson", "--probes", "3"], "probes 3"),
                        (["-s", "sample.rtol=0.9", "-s", "sample.atol=0.9"], "sample.rtol = 0.9"),
                        (["-s", "data.slope=4"], "data.slope = 4")):
        capsys.readouterr()
        assert main(["nll", str(spec), "-n", "4", *extra]) == 0
        assert f"not the model's own NLL: " in (out := capsys.readouterr().out) and said in out, out
    assert json.loads((folder / "nll-test.json").read_text()) == own
    assert len(list(folder.glob("nll-test-*.json"))) == 4
    capsys.readouterr()
    assert main(["nll", str(spec), "-n", "4", "--divergence", "exact"]) == 0  # the default, named
    assert "wrote samples/oracle/nll-test.json" in capsys.readouterr().out


def test_a_split_beside_given_images_is_a_usage_error(capsys, tmp_path, monkeypatch):
    spec = small_oracle(tmp_path, monkeypatch, "gamma(t) = linear(t)\n")
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 4, 4)))
    assert main(["nll", str(spec), "--given", str(tmp_path / "x.npy"), "--split", "train"]) == 2
    assert "E003" in (err := capsys.readouterr().err) and "--split" in err and "--given" in err


def test_probes_on_a_conditional_model_count_its_generated_components(capsys, tmp_path, monkeypatch):
    # D = 512 but 256 generated: the exact divergence; the error was the Python API's wording
    spec = small_oracle(tmp_path, monkeypatch, "given_i = col(i) < 0.5\ngamma(t) = linear(t, lo = -10, hi = 10)\n",
                        data="grf(size = 16, channels = 2, n = 40)")
    assert main(["nll", str(spec), "-n", "2", "--probes", "4"]) == 2
    err = capsys.readouterr().err
    assert "E003" in err and "256 generated components" in err and "--divergence hutchinson" in err


def test_params_set_on_a_model_show_the_coverage_warnings_of_their_schedule(capsys, tmp_path, monkeypatch):
    # a = 0.5 stops at gamma = 5: W302, and a likelihood whose prior term is wrong; --path showed it
    spec = small_oracle(tmp_path, monkeypatch, "param a = 1\ngamma(t) = linear(a * t, lo = -10, hi = 10)\n")
    assert main(["nll", str(spec), "-n", "2", "-s", "a=0.5"]) == 0
    assert "W302" in capsys.readouterr().err
