"""From a checked spec to the mathematical model: data, basis, statistics, prior, schedule.

Input: a `CheckedSpec` (`gudlang.check`).
Output: `Model`, holding the loaded `DataSet`, the fitted `Basis`, the `ComponentStats`,
the `Prior`, the per-component feature vectors the schedule is written in, the
`CompiledSchedule`, the schedule's numeric warnings, and the model hash. `build_model`
raises `GudError` (E3xx from the schedule checks, E4xx from the data, E5xx from bases and
priors), with the span of the spec statement that caused it.

Variances below `VAR_FLOOR` times the largest are raised to it (constant pixels, e.g. the
border of the digits, would otherwise give log(0) and infinite whitening).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gudlang import ast as A
from gudlang.bases import Basis, make_basis
from gudlang.check import CheckedSpec
from gudlang.data import DataSet, load_data
from gudlang.diagnostics import Diagnostic, GudError
from gudlang.hashing import full_hash, model_hash, normal_form
from gudlang.priors import Prior, matched, scaled, white
from gudlang.schedules import CompiledSchedule, check_schedule, compile_schedule, generation_order
from gudlang.spec import FixedParam, Spec
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

    def fixed_param_values(spec: Spec) -> dict[str, float]:
    return {k: p.value for k, p in spec.params.items() if isinstance(p, FixedParam)}


__all__ = ["Model", "build_model", "load_spec_data", "generation_order", "normal_form",
           "fixed_param_values", "VAR_FLOOR"]
