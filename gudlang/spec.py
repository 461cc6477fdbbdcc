"""Validate a lowered program into a `Spec` with Pydantic v2.

Input: `(Program, SourceMap)` from `gudlang.lower`.
Output: `Spec`: the declarations (data, basis, prior, network as discriminated unions on
`kind`), the settings blocks with their defaults, the params, and the definitions (their
expressions stay AST nodes; `gudlang.check` resolves them).
Errors (all collected, each with the span of the offending text): E203 set twice,
E204 too many arguments, E205 unknown keyword, E206 missing statement, E210 invalid value,
E211 unknown setting, E213 expression where a constant is needed.
"""

from __future__ import annotations

import difflib
import math
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gudlang import ast as A
from gudlang.diagnostics import Diagnostic, GudError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data):
        """true / false and strings where numbers go fail as what they are (Pydantic reads true as
        1 and "1e-3" or "1_000" as numbers)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            kind = _unwrap(field.annotation)[0] if field is not None else None
            if kind in (int, float):
                out[name] = _not_a_number(value)
            elif isinstance(value, (list, tuple)) and get_origin(kind) is tuple \
                    and any(_unwrap(a)[0] in (int, float) for a in get_args(kind)):
                out[name] = [_not_a_number(v) for v in value]
        return out


class _Written:
    """A string where a number goes: no number to Pydantic, shown as the spec wrote it."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return value_text(self.text)


def _not_a_number(value):
    """`value`, or for true / false and strings a stand-in that a number field refuses."""
    if isinstance(value, bool):
        return value_text(value)
    if type(value) is not str:
        return value
    try:
        if not math.isfinite(float(value)):
            return value  # inf, nan: Pydantic says that a finite number is wanted
    except ValueError:
        pass
    return _Written(value)


# --------------------------------------------------------------------------- data
# true or false, nothing else: Pydantic would read yes, 1 and "off" as booleans.
_Flag = Annotated[bool, Field(strict=True)]
_Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
GRF_MAX_VALUES = 100_000_000  # 400 MB of float32


class DigitsData(_Model):
    """scikit-learn's 8x8 handwritten digits, shipped with gudlang, scaled to [-1, 1]."""
    kind: Literal["digits"] = "digits"
    test_fraction: _Fraction = 0.1
    seed: int = 0


class GrfData(_Model):
    """Stationary periodic Gaussian random fields with a power-law spectrum (exact oracle)."""
    kind: Literal["grf"] = "grf"
    size: Annotated[int, Field(ge=2, le=256)] = 8
    slope: Annotated[float, Field(ge=0.0)] = 2.0
    n: Annotated[int, Field(ge=2)] = 2000
    channels: Annotated[int, Field(ge=1, le=4)] = 1
    test_fraction: _Fraction = 0.1
    seed: int = 0

    @model_validator(mode="after")
    def _fits_in_memory(self):
        values = self.n * self.size * self.size * self.channels
        if values > GRF_MAX_VALUES:
            raise ValueError(f"n * size^2 * channels = {values:,} values is more than the "
                             f"{GRF_MAX_VALUES:,} a generated data set may hold; lower n or size")
        return self


class NpzData(_Model):
    """An array in an .npz file, channels-first or channels-last."""
    kind: Literal["npz"] = "npz"
    path: str
    key: str | None = None
    layout: Literal["auto", "channels_first", "channels_last"] = "auto"
    shape: tuple[int, int, int] | None = None
    range: tuple[float, float] | None = (-1.0, 1.0)
    levels: Annotated[int, Field(ge=2)] | None = None
    test_fraction: _Fraction = 0.1
    seed: int = 0


class ImagesData(_Model):
    """A folder of PNG / JPEG images, resized and centre-cropped deterministically."""
    kind: Literal["images"] = "images"
    folder: str
    size: Annotated[int, Field(ge=2, le=1024)] = 32
    channels: Literal[1, 3] = 3
    recursive: _Flag = False
    test_fraction: _Fraction = 0.1
    seed: int = 0


class StandardData(_Model):
    """MNIST, FashionMNIST or CIFAR-10 read from local files in torchvision's layout
    (official train / test split)."""
    kind: Literal["dataset"] = "dataset"
    name: Literal["mnist", "fashion_mnist", "cifar10"]
    root: str


DataDecl = Annotated[Union[DigitsData, GrfData, NpzData, ImagesData, StandardData],
                     Field(discriminator="kind")]


# --------------------------------------------------------------------------- bases
class PixelBasis(_Model):
    kind: Literal["pixel"] = "pixel"


class PcaBasis(_Model):
    kind: Literal["pca"] = "pca"
    channels: Literal["mix", "separate"] = "mix"


class DctBasis(_Model):
    kind: Literal["dct"] = "dct"


class FourierBasis(_Model):
    kind: Literal["fourier"] = "fourier"


class WaveletBasis(_Model):
    kind: Literal["wavelet"] = "wavelet"
    family: str = "haar"
    levels: Annotated[int, Field(ge=1, le=10)] = 1


BasisDecl = Annotated[Union[PixelBasis, PcaBasis, DctBasis, FourierBasis, WaveletBasis],
                      Field(discriminator="kind")]


# --------------------------------------------------------------------------- priors
class WhitePrior(_Model):
    """s_i = 1: the diffusion ends at N(0, I) in the basis."""
    kind: Literal["white"] = "white"


class MatchedPrior(_Model):
    """s_i^2 = var(i): the diffusion ends at the Gaussian with the data's variances."""
    kind: Literal["matched"] = "matched"


class ScalePrior(_Model):
    """s_i given by a per-component expression, e.g. scale(sqrt(var(i)) + 0.1)."""
    kind: Literal["scale"] = "scale"
    s: Any  # an AST expression, resolved by the checker


PriorDecl = Annotated[Union[WhitePrior, MatchedPrior, ScalePrior], Field(discriminator="kind")]


# --------------------------------------------------------------------------- networks
class MlpNetwork(_Model):
    kind: Literal["mlp"] = "mlp"
    hidden: Annotated[int, Field(ge=1)] = 256
    depth: Annotated[int, Field(ge=1)] = 3


class UNetNetwork(_Model):
    kind: Literal["unet"] = "unet"
    channels: Annotated[int, Field(ge=1)] = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: Annotated[int, Field(ge=1)] = 1
    attention_resolutions: tuple[int, ...] = ()
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    groups: Annotated[int, Field(ge=1)] = 8
    state: Literal["linear", "channels"] = "linear"  # how gamma enters (gudlang.networks)


class OracleNetwork(_Model):
    """The exact epsilon predictor for Gaussian data (`grf`): no training needed."""
    kind: Literal["oracle"] = "oracle"


NetworkDecl = Annotated[Union[MlpNetwork, UNetNetwork, OracleNetwork], Field(discriminator="kind")]


# --------------------------------------------------------------------------- blocks
class TrainSettings(_Model):
    """How the network is trained. What defines the model is hashed; how long a run trains
    and how it logs are not (`hashing.UNHASHED`), so a run can grow: `gud train --resume RUN
    -s train.steps=N` (except with lr_schedule = cosine, whose decay is tied to `steps`)."""
    steps: Annotated[int, Field(ge=0)] = 3000
    batch: Annotated[int, Field(ge=1)] = 128
    lr: Annotated[float, Field(gt=0)] = 2e-4
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after the linear warm-up
    warmup: Annotated[int, Field(ge=0)] = 100
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: Annotated[float, Field(gt=0)] = 1e-8
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(gt=0)] = 1.0
    accumulate: Annotated[int, Field(ge=1)] = 1  # micro-batches of batch / accumulate per step
    flip: _Flag = False  # random horizontal flips of the training images
    ema: Annotated[float, Field(ge=0, lt=1)] = 0.999
    ema_warmup: _Flag = True  # decay min(ema, (1 + step) / (10 + step))
    seed: Annotated[int, Field(ge=-2 ** 63, le=2 ** 63 - 1)] = 0  # torch.manual_seed takes it
    log_every: Annotated[int, Field(ge=1)] = 50
    sample_every: Annotated[int, Field(ge=0)] = 1000
    checkpoint_every: Annotated[int, Field(ge=1)] = 1000

    @model_validator(mode="after")
    def _batch_splits(self):
        if self.batch % self.accumulate:
            raise ValueError(f"batch = {self.batch} does not split into accumulate = {self.accumulate} "
                             "equal micro-batches")
        return self


# The methods of gudlang.samplers.SAMPLERS (kept torch-free here; a test keeps the two equal).
SamplerName = Literal["em", "heun", "midpoint", "ddim", "dpm2", "dpmpp2m", "dpmpp3m", "unipc", "adaptive"]


# The time grids of gudlang.samplers.GRIDS (a test keeps the two equal).
GridName = Literal["uniform", "logsnr", "fitted"]


# The most steps a fixed-step sampler takes (its time grid is a list of that many floats).
MAX_SAMPLE_STEPS = 1_000_000


class SampleSettings(_Model):
    """Defaults chosen by benchmarks/samplers.py, equal to gudlang.samplers' DEFAULT_* (a test
    keeps them equal); `grid` is the time grid of the fixed-step samplers (samplers.GRIDS)."""
    sampler: SamplerName = "unipc"
    steps: Annotated[int, Field(ge=1, le=MAX_SAMPLE_STEPS)] = 50
    grid: GridName = "fitted"
    n: Annotated[int, Field(ge=1)] = 64
    seed: int = 0
    rtol: Annotated[float, Field(ge=1e-12)] = 1e-4  # >= samplers.MIN_TOLERANCE (a test keeps them equal)
    atol: Annotated[float, Field(ge=1e-12)] = 1e-4
    denoise: _Flag = True


class RuntimeSettings(_Model):
    """How to run, never what is computed: excluded from every hash."""
    device: str = "auto"
    dtype: Literal["float32", "bfloat16", "float64"] = "float32"
    compile: _Flag = False
    log: Literal["csv", "tensorboard"] = "csv"  # metrics.csv always; tensorboard adds RUN/tensorboard/


# --------------------------------------------------------------------------- params, spec
class FixedParam(_Model):
    kind: Literal["fixed"] = "fixed"
    value: float


class UniformParam(_Model):
    """Drawn per training example; at sampling time fixed to `-s name=value` or its mean.
    A param named `x_i` is drawn per component too (one draw per component, or per group of
    components with equal `group` value: `param x_i ~ uniform(0, 1, group = col(i))`); `group`
    is an unresolved expression, hashed through `CheckedSpec.groups`, not through the dump."""
    kind: Literal["uniform"] = "uniform"
    lo: float
    hi: float
    group: Any = Field(default=None, exclude=True)

    @property
    def mean(self) -> float:
        return 0.5 * (self.lo + self.hi)


ParamDecl = Annotated[Union[FixedParam, UniformParam], Field(discriminator="kind")]


class Spec(_Model):
    """A validated spec: declarations and settings, expressions still unresolved."""
    version: int
    data: DataDecl
    basis: BasisDecl = PixelBasis()
    prior: PriorDecl = WhitePrior()
    network: NetworkDecl = UNetNetwork()
    params: dict[str, ParamDecl] = {}
    definitions: tuple[Any, ...] = ()  # gudlang.ast.Define, in source order
    train: TrainSettings = TrainSettings()
    sample: SampleSettings = SampleSettings()
    runtime: RuntimeSettings = RuntimeSettings()


# Positional argument order of the declaration constructors (= field order).
_DECLS: dict[str, dict[str, type[_Model]]] = {
    "data": {"digits": DigitsData, "grf": GrfData, "npz": NpzData, "images": ImagesData,
             "dataset": StandardData},
    "basis": {"pixel": PixelBasis, "pca": PcaBasis, "dct": DctBasis, "fourier": FourierBasis,
              "wavelet": WaveletBasis},
    "prior": {"white": WhitePrior, "matched": MatchedPrior, "scale": ScalePrior},
    "network": {"mlp": MlpNetwork, "unet": UNetNetwork, "oracle": OracleNetwork},
}
_BLOCKS = {"train": TrainSettings, "sample": SampleSettings, "runtime": RuntimeSettings}


def constructor_fields(section: str, kind: str) -> list[str]:
    return [f for f in _DECLS[section][kind].model_fields if f != "kind"]


def block_fields(kind: str) -> list[str]:
    return list(_BLOCKS[kind].model_fields)


def did_you_mean(name: str, candidates) -> str | None:
    """"did you mean `x`?" for the candidate closest to `name`, case aside ("MNIST": `mnist`)."""
    lower = {str(c).lower(): c for c in sorted(candidates, reverse=True)}
    close = difflib.get_close_matches(str(name).lower(), sorted(lower), n=1, cutoff=0.6)
    return f"did you mean `{lower[close[0]]}`?" if close else None


class ConstantError(Exception):
    def __init__(self, path, message: str):
        self.path, self.message = path, message


def constant(expr: A.Expr, path, names: dict[str, Any] | None = None):
    """Fold a constant expression (numbers, strings, names as words, lists, arithmetic on
    numbers) to a Python value; raise ConstantError naming the offending node."""
    names = names or {}
    if isinstance(expr, A.Num):
        v = expr.value
        plain = expr.text and all(c.isdigit() for c in expr.text)
        return int(expr.text) if plain else v  # from the text: a float loses digits beyond 2^53
    if isinstance(expr, A.Str):
        return expr.value
    if isinstance(expr, A.Name):
        if expr.id in names:
            return names[expr.id]
        if expr.id == "pi":
            return math.pi
        return {"true": True, "false": False, "none": None}.get(expr.id, expr.id)
    if isinstance(expr, A.List):
        return [constant(x, path + ("items", k), names) for k, x in enumerate(expr.items)]
    if isinstance(expr, A.Neg):
        v = constant(expr.operand, path + ("operand",), names)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v
        raise ConstantError(path, "expected a number after `-`")
    if isinstance(expr, A.BinOp):
        left = constant(expr.left, path + ("left",), names)
        right = constant(expr.right, path + ("right",), names)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
            raise ConstantError(path, f"`{expr.op}` needs numbers on both sides here")
        try:
            value = {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                     "/": lambda: left / right, "^": lambda: float(left) ** right}[expr.op]()
            if isinstance(value, complex):  # (-8) ^ (1/3) in Python
                raise ValueError("a negative number to a fractional power")
            if not math.isfinite(value):  # int arithmetic has no bound; float arithmetic gives inf
                raise OverflowError
            return value
        except OverflowError:
            raise ConstantError(path, "cannot evaluate this constant: the result is beyond +-1.8e308 "
                                      "(64-bit floats)") from None
        except (ZeroDivisionError, ValueError) as e:
            raise ConstantError(path, f"cannot evaluate this constant: {e}") from None
    raise ConstantError(path, "expected a constant value (a number, a word, a string or a list)")


class _Builder:
    """Collects plain data for Pydantic plus a map from data locations to AST paths."""

    def __init__(self, program: A.Program, smap: A.SourceMap):
        self.program, self.smap = program, smap
        self.param_names = {st.name for st in program.statements if isinstance(st, A.Param)}
        self.errors: list[Diagnostic] = []
        self.locs: dict[tuple, tuple] = {}
        self.seen: dict[str, tuple] = {}

    def error(self, code, message, path, label="", help=None):
        self.errors.append(Diagnostic(code, message, span=self.smap.span(path), label=label,
                                      help=help, path=self.smap.path))

    def once(self, key: str, path) -> bool:
        if key in self.seen:
            first = self.smap.span(self.seen[key])
            where = f" (first set at line {first.line})" if first else ""
            self.error("E203", f"`{key}` is set twice{where}", path, "set again here",
                       help="keep one of them")
            return False
        self.seen[key] = path
        return True

    def decl(self, section: str, expr: A.Expr, path) -> dict | None:
        kinds = _DECLS[section]
        if isinstance(expr, A.Name):
            call = A.Call(expr.id)
            fpath = path
        elif isinstance(expr, A.Call):
            call, fpath = expr, path + ("func",)
        else:
            self.error("E210", f"`{section}` expects one of: {', '.join(kinds)}", path, "not a declaration",
                       help=f"for example `{section} = {next(iter(kinds))}()`")
            return None
        if call.func not in kinds:
            self.error("E201", f"unknown {section} `{call.func}`", fpath, f"not a known {section}",
                       help=did_you_mean(call.func, kinds) or f"known: {', '.join(kinds)}")
            return None
        fields = constructor_fields(section, call.func)
        out: dict[str, Any] = {"kind": call.func}
        self.locs[(section,)] = path
        if len(call.args) > len(fields):
            extra = path + ("args", len(fields))
            self.error("E204", f"`{call.func}` takes at most {len(fields)} positional argument(s), "
                               f"got {len(call.args)}", extra, "extra argument",
                       help=f"arguments: {', '.join(fields) or 'none'}")
        for k, arg in enumerate(call.args[:len(fields)]):
            apath = path + ("args", k)
            if section == "prior" and call.func == "scale":
                out[fields[k]] = arg
            else:
                self._put(out, fields[k], arg, apath)
            self.locs[(section, fields[k])] = apath
        for k, kw in enumerate(call.kwargs):
            kpath = path + ("kwargs", k)
            if kw.name not in fields:
                self.error("E205", f"`{call.func}` has no argument `{kw.name}`", kpath, "unknown argument",
                           help=did_you_mean(kw.name, fields) or f"arguments: {', '.join(fields) or 'none'}")
                continue
            if kw.name in out:
                by_position = kw.name in fields[:len(call.args)]
                self.error("E205", f"argument `{kw.name}` given twice" + (" (by position and by name)" if by_position
                                                                          else ""), kpath, "given again",
                           help=f"positional arguments fill {call.func}({', '.join(fields)}) in order, wherever "
                                "they stand in the call: name the later ones too" if by_position else None)
                continue
            if section == "prior" and call.func == "scale":
                out[kw.name] = kw.value
            else:
                self._put(out, kw.name, kw.value, kpath + ("value",))
            self.locs[(section, kw.name)] = kpath + ("value",)
        return out

    def _put(self, out: dict, key: str, expr: A.Expr, path) -> None:
        used = [n.id for _, n in A.walk(expr) if isinstance(n, A.Name) and n.id in self.param_names]
        if used:
            self.error("E213", f"param `{used[0]}` cannot set `{key}`: params only enter formulas",
                       path, "a param", help="write the number itself here")
            return
        try:
            out[key] = constant(expr, path)
        except ConstantError as e:
            self.error("E213", e.message, e.path, "not a constant")

    def block(self, block: A.Block, path) -> dict:
        fields = block_fields(block.kind)
        out: dict[str, Any] = {}
        for k, s in enumerate(block.settings):
            spath = path + ("settings", k)
            if s.key not in fields:
                self.error("E211", f"unknown setting `{s.key}` in `{block.kind}`", spath + ("key",),
                           "unknown setting",
                           help=did_you_mean(s.key, fields) or f"settings: {', '.join(fields)}")
                continue
            if s.key in out:
                self.error("E203", f"`{s.key}` is set twice in `{block.kind}`", spath, "set again here")
                continue
            self._put(out, s.key, s.value, spath + ("value",))
            self.locs[(block.kind, s.key)] = spath + ("value",)
        return out

    def param(self, p: A.Param, path, fixed: dict[str, float]) -> dict | None:
        if p.value is not None:
            try:
                v = constant(p.value, path + ("value",), fixed)
            except ConstantError as e:
                self.error("E213", e.message + " (a param's value is a constant; it may use "
                           "earlier fixed params)", e.path, "not a constant")
                return None
            if isinstance(p.value, A.Name) and isinstance(v, str):  # a name that is no fixed param above
                later = v in self.param_names and v != p.name
                self.error("E210", f"param `{p.name}` must be a number, got the name `{v}`", path + ("value",),
                           "not a number", help=f"a param's value may use numbers and the fixed params declared "
                                                f"before it{'; declare `' + v + '` first' if later else ''}")
                return None
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                self.error("E210", f"param `{p.name}` must be a number", path + ("value",), "not a number")
                return None
            fixed[p.name] = float(v)
            self.locs[("params", p.name)] = path + ("value",)
            return {"kind": "fixed", "value": float(v)}
        dist = p.dist
        from gudlang.builtins import DISTRIBUTIONS
        if dist.func not in DISTRIBUTIONS:
            self.error("E201", f"unknown distribution `{dist.func}`", path + ("dist", "func"),
                       "not a known distribution", help=did_you_mean(dist.func, DISTRIBUTIONS)
                       or f"known: {', '.join(DISTRIBUTIONS)}")
            return None
        names = DISTRIBUTIONS[dist.func]
        values = {}
        args = [(names[k] if k < len(names) else None, a, path + ("dist", "args", k))
                for k, a in enumerate(dist.args)]
        group = None
        for k, kw in enumerate(dist.kwargs):
            if kw.name == "group":  # a per-component expression, resolved by the checker
                if group is not None:
                    self.error("E205", f"argument `group` of `{dist.func}` given twice",
                               path + ("dist", "kwargs", k, "value"), "given again")
                elif not p.name.endswith("_i"):
                    self.error("E208", f"`group` draws `{p.name}` per group of components, so the param "
                               "varies with the component", path + ("name",), "per-component param",
                               help=f"name it `{p.name}_i` to say so")
                group = kw.value
                self.locs[("param_group", p.name)] = path + ("dist", "kwargs", k, "value")
            else:
                args.append((kw.name, kw.value, path + ("dist", "kwargs", k, "value")))
        given = set()
        for name, expr, apath in args:
            if name is None:
                self.error("E204", f"`{dist.func}` takes {len(names)} arguments", apath, "extra argument")
                continue
            if name not in names:
                self.error("E205", f"`{dist.func}` has no argument `{name}`", apath, "unknown argument",
                           help=f"arguments: {', '.join(names)}, group")
                continue
            if name in given:
                self.error("E205", f"argument `{name}` of `{dist.func}` given twice", apath, "given again")
                continue
            given.add(name)
            try:
                values[name] = float(constant(expr, apath, fixed))
            except ConstantError as e:
                self.error("E213", f"`{name}` must be a constant number ({e.message})", apath, "not a constant")
            except (TypeError, ValueError):
                self.error("E213", f"`{name}` must be a constant number", apath, "not a constant")
        if given - set(values):
            return None  # an argument was reported above; a "missing" error would mislead
        missing = [n for n in names if n not in values]
        if missing:
            self.error("E206", f"`{dist.func}` is missing {', '.join(f'`{m}`' for m in missing)}",
                       path + ("dist",), "incomplete", help=f"write {dist.func}({', '.join(names)})")
            return None
        if not values["lo"] < values["hi"]:
            self.error("E210", f"uniform({values['lo']:g}, {values['hi']:g}) needs lo < hi", path + ("dist",),
                       "empty range")
            return None
        self.locs[("params", p.name)] = path + ("dist",)
        return {"kind": "uniform", **values, "group": group}


def build_spec(program: A.Program, smap: A.SourceMap) -> Spec:
    """Program -> Spec, or GudError with every problem found."""
    spec, errors = validate_program(program, smap)
    if errors:
        raise GudError(errors)
    return spec


def validate_program(program: A.Program, smap: A.SourceMap) -> tuple[Spec | None, list[Diagnostic]]:
    """Program -> (Spec with invalid entries left at their defaults, diagnostics), so that the
    checker can go on and report the rest of the file's errors in the same run."""
    b = _Builder(program, smap)
    plain: dict[str, Any] = {"version": int(program.version.value) if program.version else 1}
    params: dict[str, Any] = {}
    fixed: dict[str, float] = {}
    definitions = []
    for k, st in enumerate(program.statements):
        path = ("statements", k)
        if isinstance(st, A.Assign):
            if b.once(st.section, path):
                decl = b.decl(st.section, st.value, path + ("value",))
                if decl is not None:
                    plain[st.section] = decl
        elif isinstance(st, A.Block):
            if b.once(st.kind, path):
                plain[st.kind] = b.block(st, path)
        elif isinstance(st, A.Param):
            if b.once(st.name, path + ("name",)):
                b.locs[("param_name", st.name)] = path + ("name",)
                decl = b.param(st, path, fixed)
                if decl is not None:
                    params[st.name] = decl
        elif isinstance(st, A.Define):
            if b.once(st.name, path + ("name",)):
                definitions.append((k, st))
            else:  # reported (E203); the checker need not report the declaration as missing
                b.locs[("refused_definition", st.name)] = path + ("name",)
    plain["params"] = params
    plain["definitions"] = tuple(definitions)
    smap.anchors.update(b.locs)
    errors = list(b.errors)
    if "data" not in plain and "data" not in b.seen:
        errors.append(Diagnostic("E206", "the spec has no `data = ...` statement", path=smap.path,
                                 help="add for example `data = digits()`"))
        plain["data"] = {"kind": "digits"}  # stand-in so the checker can go on
    # A value refused (and dropped) or a declaration refused at its statement is not then
    # also "missing": that would be a second, misleading message about the same thing.
    refused = {(key,) for key in b.seen if key not in plain}
    dropped: set[tuple] = set()
    for _ in range(8):
        try:
            return Spec.model_validate(plain), errors
        except ValidationError as e:
            for err in e.errors():
                loc = tuple(err["loc"])
                if err.get("type") == "missing" and (loc in dropped or loc[:1] in refused):
                    continue
                diagnostic = _pydantic_diagnostic(err, b, smap, plain)
                if diagnostic not in errors:  # one message for a list with several bad items
                    errors.append(diagnostic)
            for err in e.errors():
                _drop(plain, err["loc"])
                dropped.add(tuple(err["loc"]))
    return None, errors


def _drop(plain: dict, loc: tuple) -> None:
    """Remove the entry at a Pydantic error location so that its default applies."""
    key = loc[0]
    if key in ("data", "basis", "prior", "network"):
        entry = plain.get(key)
        if isinstance(entry, dict) and len(loc) >= 3 and loc[2] in entry:
            entry.pop(loc[2])
        elif key == "data":
            plain[key] = {"kind": "digits"}
        else:
            plain.pop(key, None)
    elif key in ("train", "sample", "runtime", "params") and len(loc) >= 2:
        plain.get(key, {}).pop(loc[1], None)
    else:
        plain.pop(key, None)


def _pydantic_diagnostic(err: dict, b: _Builder, smap: A.SourceMap, plain: dict) -> Diagnostic:
    loc = tuple(str(x) for x in err["loc"])
    # Discriminated unions put the tag in the location: ("data", "npz", "path").
    if len(loc) >= 2 and loc[0] in _DECLS and loc[1] in _DECLS[loc[0]]:
        loc = (loc[0],) + loc[2:]
    if loc[:1] == ("params",) and len(loc) >= 2:
        loc = loc[:2]
    path = None
    for n in range(len(loc), 0, -1):
        if loc[:n] in b.locs:
            path = b.locs[loc[:n]]
            break
    span = smap.span(path) if path else None
    model, name = _field(err["loc"])
    if err.get("type") == "missing" and (model is None or len(loc) == 2):
        where = setting_name(err["loc"])
        return Diagnostic("E206", f"`{where}` is required", span=span, path=smap.path, label="missing argument",
                          help=f"give it, for example `{loc[-1]} = ...`")
    message, help = invalid_value(err, plain)
    return Diagnostic("E210", message, span=span, path=smap.path, label="invalid value", help=help)


# ----------------------------------------------------------------------- messages
# Names of the items of fixed-length list settings, for their messages.
_ITEM_NAMES = {(TrainSettings, "betas"): "beta1, beta2", (NpzData, "shape"): "C, H, W",
               (NpzData, "range"): "low, high"}
_COUNTS = {2: "two", 3: "three", 4: "four"}
_INT64 = " from -2^63 to 2^63 - 1"  # what an unbounded integer setting holds


def setting_name(loc: tuple) -> str:
    """`train.seed`, `data.size` for a Pydantic error location (tags and item indices left out)."""
    loc = tuple(str(x) for x in loc)
    if len(loc) >= 2 and loc[0] in _DECLS and loc[1] in _DECLS[loc[0]]:
        loc = (loc[0],) + loc[2:]
    if loc[:1] == ("params",):
        loc = loc[:2]
    return ".".join(x for x in loc if not x.isdigit() and x not in {"int", "float", "str"}) or "spec"


def _field(loc: tuple) -> tuple[type[_Model] | None, str | None]:
    """The model and field a Pydantic error location points into, if a setting or argument."""
    loc = tuple(str(x) for x in loc)
    if len(loc) >= 3 and loc[0] in _DECLS and loc[1] in _DECLS[loc[0]]:
        model, name = _DECLS[loc[0]][loc[1]], loc[2]
    elif len(loc) >= 2 and loc[0] in _BLOCKS:
        model, name = _BLOCKS[loc[0]], loc[1]
    else:
        return None, None
    return (model, name) if name in model.model_fields else (None, None)


def _number_text(v: float) -> str:
    """A number as a spec writes it: 1000, 0.999, 1e-12, 1e20."""
    if float(v).is_integer() and abs(v) < 1e16:
        return str(int(v))
    return repr(float(v)).replace("e+", "e")


def _bounds(metadata, integer: bool) -> str:
    """' >= 1', ' in [0, 1)' from annotated_types constraints (integers: 64-bit when unbounded)."""
    lo = hi = None
    for m in metadata:
        for attr, side, bracket in (("ge", "lo", "["), ("gt", "lo", "("), ("le", "hi", "]"), ("lt", "hi", ")")):
            if getattr(m, attr, None) is not None:
                bound = (bracket, _number_text(getattr(m, attr)))
                lo, hi = (bound, hi) if side == "lo" else (lo, bound)
    if lo == ("[", _number_text(-2 ** 63)) and hi == ("]", _number_text(2 ** 63 - 1)):  # int64
        return _INT64
    if lo and hi:
        return f" in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f" {'>=' if lo[0] == '[' else '>'} {lo[1]}"
    if hi:
        return f" {'<=' if hi[0] == ']' else '<'} {hi[1]}"
    return _INT64 if integer else ""


def _unwrap(annotation, metadata=()):
    """(type, constraints) of an annotation, through Annotated and `| None`."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _unwrap(args[0], tuple(metadata) + tuple(getattr(args[1], "metadata", ())))
    if get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        return _unwrap(next(a for a in args if a is not type(None)), metadata)
    return annotation, tuple(metadata)


def _wanted(annotation, metadata=(), items: str | None = None, finite: bool = False) -> str:
    """What a setting holds, in the spec's words: `a whole number >= 1`, `two numbers (beta1,
    beta2), each in [0, 1)`, `true or false`, `one of em, heun`."""
    kind, metadata = _unwrap(annotation, metadata)
    number = "a finite number" if finite else "a number"
    if kind is bool:
        return "true or false"
    if kind is int:
        return "a whole number" + _bounds(metadata, integer=True)
    if kind is float:
        return number + _bounds(metadata, integer=False)
    if kind is str:
        return "a word or a quoted string"
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(str(a) for a in get_args(kind))
    if get_origin(kind) is tuple:
        args = get_args(kind)
        variable = len(args) == 2 and args[1] is Ellipsis
        item, item_meta = _unwrap(args[0])
        noun = "whole numbers" if item is int else "numbers"
        each = _bounds(item_meta, integer=False) if item is not int else ""
        each = f", each{each}" if each else ""
        if variable:
            return f"a list of {noun}{each}"
        named = f" ({items})" if items else ""
        return f"{_COUNTS.get(len(args), len(args))} {noun}{named}{each}"
    return "a different value"


def value_text(v) -> str:
    """A constant as a spec would write it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, float):
        return _number_text(v)
    if isinstance(v, str):
        return v if v.isidentifier() else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value_text(x) for x in v) + "]"
    return str(v)


def invalid_value(err: dict, plain: dict | None = None, override: bool = False) -> tuple[str, str | None]:
    """(message, help) for one Pydantic error on a spec's data `plain`: what the setting holds
    and the value it got, never Pydantic's wording; `override`: the help is written for -s."""
    where = setting_name(err["loc"])
    model, name = _field(err["loc"])
    if err.get("type") == "value_error":  # a model's own check: its message is ours
        return f"in `{where}`: {str(err['msg']).removeprefix('Value error, ')}", None
    if model is None:
        return f"invalid value for `{where}`", None
    info = model.model_fields[name]
    value = err.get("input")
    depth = 3 if str(err["loc"][0]) in _DECLS else 2
    inside = len(err["loc"]) > depth  # an item of a list setting: show the whole list
    if (inside or err.get("type") == "missing") and plain is not None:
        entry = plain.get(str(err["loc"][0]))
        value = entry.get(name, value) if isinstance(entry, dict) else value
    wanted = _wanted(info.annotation, info.metadata, _ITEM_NAMES.get((model, name)),
                     finite=err.get("type") == "finite_number")
    kind = get_origin(_unwrap(info.annotation)[0])
    verb = "needs" if kind is tuple else "must be"
    message = f"`{where}` {verb} {wanted}, got {value_text(value)}"
    setting = where.rpartition(".")[2]
    if kind is Literal and isinstance(value, str):
        return message, did_you_mean(value, [str(a) for a in get_args(_unwrap(info.annotation)[0])])
    if kind is tuple and isinstance(info.default, tuple):
        example = value_text(info.default)
        return message, (f"for example -s '{where}={example}'" if override
                         else f"for example `{setting} = {example}`")
    return message, None
