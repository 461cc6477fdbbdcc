"""The `gud` command: exit codes, output formats, and that no input gives a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from golden_util import check_golden
from gudlang.cli import main

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
GOLDEN = ROOT / "tests" / "golden"


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_passes_on_every_shipped_spec(capsys):
    shipped = sorted([*SPECS.glob("*.gud"), *SPECS.glob("peers/*.gud")])
    code, out, err = run(capsys, "check", *map(str, shipped))
    assert code == 0, err
    assert out.count(": ok") == len(shipped)


def test_check_reports_errors_with_exit_1(capsys):
    code, _, err = run(capsys, "check", str(GOLDEN / "errors" / "E201_unknown_function.gud"))
    assert code == 1
    assert "E201_unknown_function.gud:6:14: error[E201]: unknown function `lienar`" in err
    assert "did you mean `linear`?" in err


def test_check_json_format(capsys):
    code, out, _ = run(capsys, "check", "--format", "json", str(GOLDEN / "errors" / "E202_unknown_name.gud"))
    assert code == 1
    records = json.loads(out)
    assert records[0]["code"] == "E202" and records[0]["span"]["line"] == 4


def test_missing_file_is_a_usage_error(capsys, tmp_path):
    code, _, err = run(capsys, "check", str(tmp_path / "nope.gud"))
    assert code == 2 and "E001" in err and "Traceback" not in err


def test_directory_and_binary_inputs(capsys, tmp_path):
    code, _, err = run(capsys, "check", str(tmp_path))
    assert code == 2 and "E001" in err
    junk = tmp_path / "junk.gud"
    junk.write_bytes(bytes(range(256)) * 10)
    code, _, err = run(capsys, "check", str(junk))
    assert code == 2 and "E002" in err


def test_bad_override_syntax_and_unknown_param(capsys):
    code, _, err = run(capsys, "check", str(SPECS / "digits.gud"), "-s", "nonsense")
    assert code == 2 and "E003" in err
    code, _, err = run(capsys, "check", str(SPECS / "digits.gud"), "-s", "aa=2")
    assert code == 1 and "did you mean `a`?" in err


@pytest.mark.parametrize("override", ["a=nan", "a=inf", "a=-1e999", "train.lr=inf", "sample.rtol=nan"])
def test_non_finite_overrides_are_E210(capsys, override):
    code, _, err = run(capsys, "check", "--static", str(SPECS / "digits.gud"), "-s", override)
    assert code == 1 and "error[E210]" in err and "finite" in err and "Traceback" not in err


def test_a_formula_that_overflows_is_E302_not_a_crash(capsys, tmp_path):
    # exp(1000) folds to inf at compile time; the generated code must still run and the
    # numeric check must name the problem.
    spec = tmp_path / "overflow.gud"
    spec.write_text("gud 1\ndata = digits()\nbasis = pca()\nprior = white\n"
                    "gamma_i(t) = linear(t) + exp(1000) * rank(i)\n")
    code, _, err = run(capsys, "check", str(spec))
    assert code == 1 and "error[E302]" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["sample", "RUN", "-n", "0"], ["sample", "RUN", "--steps", "0"],
                                  ["sample", "RUN", "--steps", "many"], ["nll", "RUN", "-n", "-1"],
                                  ["train", "SPEC", "--until", "0"]])
def test_counts_below_one_are_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "gud: error: argument" in capsys.readouterr().err


def test_a_reverse_plot_needs_two_frames_and_says_so_at_the_argument(capsys):
    with pytest.raises(SystemExit) as info:  # argparse said "at least 1", then 1 was E651
        main(["plot", "RUN", "--reverse", "--frames", "1"])
    assert info.value.code == 2 and "argument --frames: must be at least 2, got 1" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["-n", "--frames"])
def test_a_reverse_plot_refuses_a_figure_too_large_to_draw(capsys, option):
    from gudlang.cli import MAX_REVERSE_FRAMES, MAX_REVERSE_SAMPLES

    most = MAX_REVERSE_SAMPLES if option == "-n" else MAX_REVERSE_FRAMES
    with pytest.raises(SystemExit) as info:  # -n 300 drew a PNG of 600 rows of images
        main(["plot", "RUN", "--reverse", option, str(most + 1)])
    assert info.value.code == 2 and f"argument {option}: must be at most {most}" in capsys.readouterr().err


def test_a_metrics_plot_refuses_overrides_it_would_ignore(capsys, tmp_path):
    code, _, err = run(capsys, "plot", str(tmp_path), "--metrics", "-s", "a=2", "-o", str(tmp_path / "m.png"))
    assert code == 2 and "E003" in err and "--metrics plots what the run logged" in err


def test_data_errors_point_at_the_data_line(capsys, tmp_path):
    spec = tmp_path / "s.gud"
    spec.write_text('gud 1\ndata = npz("missing.npz")\ngamma(t) = linear(t)\n')
    code, _, err = run(capsys, "check", str(spec))
    assert code == 1
    assert f"{spec}:2:8: error[E401]" in err


def test_fmt_check_and_diff(capsys, tmp_path):
    messy = tmp_path / "m.gud"
    messy.write_text("gud 1\ndata=digits()   gamma(t)=linear( t )\n")
    code, _, err = run(capsys, "fmt", "--check", str(messy))
    assert code == 1 and "would reformat" in err
    code, out, _ = run(capsys, "fmt", "--diff", str(messy))
    assert code == 1 and "+gamma(t) = linear(t)" in out
    code, _, _ = run(capsys, "fmt", str(messy))
    assert code == 0 and messy.read_text() == "gud 1\n\ndata = digits()\ngamma(t) = linear(t)\n"
    code, _, _ = run(capsys, "fmt", "--check", str(messy))
    assert code == 0


def test_fmt_refuses_to_rewrite_a_broken_file(capsys, tmp_path):
    broken = tmp_path / "b.gud"
    broken.write_text("gud 1\ndata = digits(\n")
    code, _, err = run(capsys, "fmt", str(broken))
    assert code == 1 and "E102" in err
    assert broken.read_text() == "gud 1\ndata = digits(\n"


def test_hash_model_full_and_show(capsys):
    code, model, _ = run(capsys, "hash", str(SPECS / "digits.gud"))
    assert code == 0 and model.startswith("gud2-sha256:")
    code, full, _ = run(capsys, "hash", "--full", str(SPECS / "digits.gud"))
    assert full != model
    code, shown, _ = run(capsys, "hash", "--show", str(SPECS / "digits.gud"))
    assert json.loads(shown)["basis"] == {"kind": "pca", "channels": "mix"}
    code, other, _ = run(capsys, "hash", str(SPECS / "digits.gud"), "-s", "a=2")
    assert other != model


@pytest.mark.parametrize("name", ["standard_linear", "sequential_columns"])
def test_explain_matches_golden(capsys, name):
    code, out, err = run(capsys, "explain", str(SPECS / f"{name}.gud"))
    assert code == 0, err
    check_golden(GOLDEN / "explain" / f"{name}.expected", out.replace(str(SPECS), "specs"))


def test_explain_resolved_spec_hashes_like_the_original(capsys, tmp_path):
    code, out, _ = run(capsys, "explain", str(SPECS / "digits.gud"))
    resolved = out.split("# shapes")[0].split("# resolved spec\n")[1]
    path = tmp_path / "resolved.gud"
    path.write_text(resolved)
    _, h1, _ = run(capsys, "hash", "--full", str(SPECS / "digits.gud"))
    _, h2, _ = run(capsys, "hash", "--full", str(path))
    assert h1 == h2


@pytest.mark.parametrize("kind", ["--schedule", "--forward"])
def test_plot_writes_a_png(capsys, tmp_path, kind):
    out = tmp_path / "p.png"
    code, _, err = run(capsys, "plot", str(SPECS / "wavelet_levels.gud"), kind, "-o", str(out))
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_makes_a_missing_folder_like_sample_does(capsys, tmp_path):
    code, _, err = run(capsys, "plot", str(SPECS / "digits.gud"), "-o", str(tmp_path / "no" / "p.png"))
    assert code == 0 and (tmp_path / "no" / "p.png").is_file(), err


def test_plot_output_names(capsys, tmp_path):
    code, _, err = run(capsys, "plot", str(SPECS / "digits.gud"), "--schedule", "-o", str(tmp_path / "p.xyz"))
    assert code == 2 and "error[E001]" in err and "not an image format" in err
    (tmp_path / "a_file").write_text("")
    code, _, err = run(capsys, "plot", str(SPECS / "digits.gud"), "--schedule", "-o", str(tmp_path / "a_file" / "p.png"))
    assert code == 1 and "error[E620]" in err and "cannot create" in err  # an output, as gud sample -o: E620
    code, out, _ = run(capsys, "plot", str(SPECS / "digits.gud"), "--schedule", "-o", str(tmp_path / "bare"))
    assert code == 0 and out.strip() == f"wrote {tmp_path / 'bare.png'}"
    assert (tmp_path / "bare.png").read_bytes()[:4] == b"\x89PNG"


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_python_m_gudlang_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "gudlang", "check", "--static", str(SPECS / "digits.gud")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


@pytest.mark.parametrize("running, threads", [(1, None), (2, "cores - 1"), (40, 1)])
def test_gud_leaves_the_cores_other_processes_use(tmp_path, monkeypatch, running, threads):
    """/proc/loadavg's running count includes gud itself; the others' cores are left to them."""
    import os

    from gudlang.cli import share_the_cpu
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    load = tmp_path / "loadavg"
    load.write_text(f"0.50 0.40 0.30 {running}/321 4242\n")
    want = {None: None, "cores - 1": 7, 1: 1}[threads]
    assert share_the_cpu(samples=1, loadavg=str(load)) == want
    assert os.environ.get("OMP_NUM_THREADS") == (None if want is None else str(want))
    assert os.environ.get("OMP_WAIT_POLICY") == (None if want is None else "PASSIVE")


def test_a_thread_count_the_user_chose_is_kept(tmp_path, monkeypatch):
    from gudlang.cli import share_the_cpu
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    load = tmp_path / "loadavg"
    load.write_text("0.50 0.40 0.30 5/321 4242\n")
    assert share_the_cpu(samples=1, loadavg=str(load)) is None


def test_a_file_the_system_refuses_is_E001_with_advice_not_a_traceback(capsys, tmp_path, monkeypatch):
    import errno

    too_long = tmp_path / ("x" * 300)  # beyond the 255-byte name limit of the file system
    code = main(["train", "--quiet", str(ROOT / "specs" / "digits.gud"), "--out", str(too_long / "runs"),
                 "-s", "train.steps=1"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "error[E001]" in err and "File name too long" in err and "shorter" in err

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.gud"))

    monkeypatch.setattr("gudlang.cli.cmd_fmt", full)
    assert main(["fmt", "x.gud"]) == 1
    err = capsys.readouterr().err
    assert "error[E001]" in err and "out.gud: No space left on device" in err and "--resume" in err


def test_fewer_images_than_torchrun_ranks_is_a_usage_error_on_every_rank(capsys, monkeypatch):
    # rank 1 got none and failed with messages about a count of 0 or an empty array
    import contextlib

    from gudlang import distributed
    spec = str(ROOT / "specs" / "grf_oracle.gud")
    monkeypatch.setattr(distributed, "every_rank", lambda what: contextlib.nullcontext())  # no other rank runs
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        for argv in (["sample", spec, "-n", "1"], ["nll", spec, "-n", "1"]):
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert "error[E003]" in err and "over 2 ranks leaves a rank with none" in err, err


@pytest.mark.parametrize("argv", [["sample", "{}"], ["nll", "{}"], ["export", "{}", "out"],
                                  ["extend", "{}", "--image", "x.npy", "--columns", "2"],
                                  ["fid", "{}", "--ref", "ref.npz"], ["train", "--resume", "{}"]])
def test_a_run_that_does_not_exist_is_a_file_error_that_exits_2(argv, capsys, tmp_path):
    # the README's exit codes: 2 for bad files given on the command line (these gave 1, E620 / E640)
    missing = str(tmp_path / "runs" / "nonexist")
    assert main([a.format(missing) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"error[E001]: {missing} not found" in err
