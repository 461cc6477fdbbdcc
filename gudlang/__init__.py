"""gudlang: a declarative language and compiler for GUD diffusion models.

A `.gud` spec declares data, basis, prior, a component-wise noise schedule, the network and
the training and sampling settings; `gudlang` parses, validates, checks and compiles it into
torch modules. See README.md and docs/architecture.md.

Python API (imported on first use, so that `gud check` starts fast):
    load(run_or_checkpoint_or_export) -> GudModel   .sample(n), .complete(images), .extend(...),
                                                    .nll(), .plot_schedule(), .export(dir), .hash
    train_run(spec, overrides, out=..., network=None, name=None) -> TrainResult
    check_file(path, overrides) / check_text(text, path, overrides) -> CheckedSpec
    build_model(checked) -> Model          data, basis, stats, prior, space, compiled schedule
    load_run(run_or_checkpoint, overrides, network=None) -> (Model, eps model, metadata)
    sample(method, eps_model, schedule, start, steps, generator) -> SampleResult
"""

__version__ = "0.2.0"
LANGUAGE_VERSION = 1

_API = {
    "check_file": "gudlang.check", "check_text": "gudlang.check", "build_model": "gudlang.pipeline",
    "load": "gudlang.api", "GudModel": "gudlang.api", "train_run": "gudlang.trainer",
    "load_run": "gudlang.runs", "sample": "gudlang.samplers",
    "GudError": "gudlang.diagnostics",
}


def __getattr__(name):
    if name in _API:
        import importlib
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'gudlang' has no attribute {name!r}")


__all__ = sorted(_API) + ["LANGUAGE_VERSION", "__version__"]
