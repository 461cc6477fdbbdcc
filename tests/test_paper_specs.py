"""The paper's settings at full size (specs/paper/): each checks statically, and trains a few
steps, samples and resumes on a synthetic stand-in of its data's shape (CIFAR-10 files in
torchvision's binary layout, a folder of 32x32 PNG crops for PCAM) with its full-size U-Net."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gudlang.check import check_file
from gudlang.cli import main
from test_data import _write_cifar

PAPER = sorted((Path(__file__).resolve().parent.parent / "specs" / "paper").glob("*.gud"))


@pytest.mark.parametrize("spec", PAPER, ids=[p.stem for p in PAPER])
def test_paper_spec_checks_statically(spec):
    checked = check_file(str(spec))
    assert checked.spec.network.kind == "unet" and checked.spec.network.channels == 128


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """data/cifar-10-batches-bin with 4 + 4 + 4 + 4 + 4 training and 4 test images, and
    data/pcam with 12 PNG crops, in a fresh folder."""
    root = tmp_path_factory.mktemp("paper")
    _write_cifar(root / "data" / "cifar-10-batches-bin", sizes=(4, 4, 4, 4, 4, 4))
    rng = np.random.default_rng(0)
    (root / "data" / "pcam").mkdir(parents=True)
    for k in range(12):
        Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(root / "data" / "pcam" / f"{k}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("spec", PAPER, ids=[p.stem for p in PAPER])
def test_paper_spec_trains_samples_and_resumes_on_a_stand_in(spec, stand_in, monkeypatch, capsys):
    monkeypatch.chdir(stand_in)
    small = ["-s", "train.batch=2", "-s", "train.warmup=1", "-s", "train.sample_every=0", "-s", "sample.n=2",
             "-s", "sample.steps=2"]
    out = stand_in / "runs" / spec.stem
    assert main(["train", "--quiet", str(spec), "--out", str(out), "--name", "r", "-s", "train.steps=2", *small]) == 0
    assert main(["train", "--quiet", "--resume", str(out / "r"), "-s", "train.steps=3"]) == 0, capsys.readouterr().err
    assert (out / "r" / "samples" / "final.png").is_file()
    text = capsys.readouterr().out
    assert "steps 2 -> 3" in text
