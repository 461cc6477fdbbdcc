"""The README's Python example runs as written, on tiny runs of the specs it names (trained for
a few steps; only the run folders, the export folder, n and the training length differ)."""

import re
from pathlib import Path

import torch

import gudlang
from gudlang.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SPECS = README.parent / "specs"


class MyNet(torch.nn.Module):
    """A user's own network: the call signature, nothing from gudlang."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(128, 64)

    def forward(self, x, gamma):
        return self.lin(torch.cat([x.flatten(1), torch.sigmoid(gamma)], dim=1)).reshape(x.shape)


def python_example() -> str:
    section = README.read_text().split("## Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def tiny_run(root: Path, spec: str) -> Path:
    small = ["-s", "train.steps=3", "-s", "train.batch=16", "-s", "train.sample_every=0"]
    assert main(["train", "--quiet", str(SPECS / spec), "--out", str(root), "--name", Path(spec).stem, *small]) == 0
    return root / Path(spec).stem


def test_the_python_example_runs(tmp_path, monkeypatch):
    code = python_example()
    runs = {"runs/digits": tiny_run(tmp_path / "runs", "digits.gud"),
            "runs/family-XXXXXXXX": tiny_run(tmp_path / "runs", "family.gud")}
    for placeholder, run in runs.items():
        assert placeholder in code
        code = code.replace(placeholder, str(run))
    code = code.replace('"exported/digits"', repr(str(tmp_path / "exported"))).replace("n=180", "n=2")
    real_train = gudlang.train_run
    monkeypatch.setattr(gudlang, "train_run", lambda spec, out, network=None: real_train(
        spec if "\n" in spec else str(README.parent / spec), {"train.steps": "2", "train.batch": "8"},
        out=tmp_path / out, quiet=True, network=network))
    monkeypatch.chdir(README.parent)  # the example reads specs/digits.gud
    namespace = {"MyNet": MyNet}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["x"].shape == namespace["y"].shape == namespace["z"].shape == (16, 1, 8, 8)
    assert namespace["done"].method == "replacement" and (tmp_path / "exported" / "model.safetensors").is_file()
    assert namespace["result"].step == 2
    assert "steps = 500" in namespace["text"] and (namespace["run"] / "spec.gud").read_text() == namespace["text"]


def test_the_opening_spec_is_the_default_spec():
    # the README opened with a digits spec trained with the defaults, said to be specs/digits.gud
    from gudlang.check import check_file, check_text
    from gudlang.hashing import full_hash
    from gudlang.pipeline import load_spec_data
    opening = re.search(r"```gud\n(.*?)```", README.read_text(), re.S).group(1)
    shown, shipped = check_text(opening, "<README>"), check_file(str(SPECS / "digits.gud"))
    fingerprint = load_spec_data(shipped).fingerprint
    assert full_hash(shown, fingerprint) == full_hash(shipped, fingerprint)
