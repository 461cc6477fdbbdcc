"""`-s key=value` overrides and the messages of invalid settings: a list is written as in a
spec and means what the spec's own text means; an invalid value, in a spec or an override,
says what the setting holds and what it got, never in Pydantic's or Python's words."""

import re
from pathlib import Path

import pytest

from gudlang.check import check_text
from gudlang.cli import main
from gudlang.diagnostics import GudError
from gudlang.hashing import model_hash

SPECS = Path(__file__).resolve().parent.parent / "specs"
FP = "0" * 64  # a stand-in data fingerprint
HEAD = "gud 1\ndata = digits()\nbasis = pca()\nprior = white\ngamma_i(t) = linear(t)\n"
RAW = ("Input should", "Field required", "nable to parse", "Value error", "valid tuple", "Traceback")
TYPE_NAMES = {"int", "float", "str", "bool", "tuple", "list", "NoneType", "Literal"}


def errors(text: str, overrides=None) -> list:
    with pytest.raises(GudError) as info:
        check_text(text, "t.gud", overrides)
    return info.value.diagnostics


def assert_plain(diagnostics) -> None:
    """No Pydantic wording and no Python type name in a message or its help."""
    for d in diagnostics:
        text = f"{d.message} {d.help or ''}"
        assert not [raw for raw in RAW if raw in text], d
        assert not TYPE_NAMES & set(re.findall(r"\w+", text)), d


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------- betas as a list
@pytest.mark.parametrize("raw", ["[0.9,0.99]", "[0.9, 0.99]", " [ 0.9 , 0.99 ] ", "[0.9, 1 - 0.01]"])
def test_betas_override_is_written_as_in_a_spec(raw):
    in_spec = check_text(HEAD + "train { betas = [0.9, 0.99] }\n", "t.gud")
    overridden = check_text(HEAD, "t.gud", {"train.betas": raw})
    assert overridden.spec.train.betas == in_spec.spec.train.betas == (0.9, 0.99)
    assert model_hash(overridden, FP) == model_hash(in_spec, FP)
    assert model_hash(overridden, FP) != model_hash(check_text(HEAD, "t.gud"), FP)  # betas are hashed


def test_betas_override_on_the_command_line(capsys):
    for raw in ("train.betas=[0.9,0.99]", "train.betas=[0.9, 0.99]"):
        code, out, err = run(capsys, "check", "--static", str(SPECS / "digits.gud"), "-s", raw)
        assert code == 0, err


@pytest.mark.parametrize("raw", ["[0.9,", "[0.9, 0.99] } data = digits() train { y = 2", "[0.9, 0.99]; x = 3",
                                 "[a + 1, 2]"])
def test_a_list_that_a_spec_would_not_read_is_E003(capsys, raw):
    (d,) = errors(HEAD, {"train.betas": raw})
    assert d.code == "E003" and d.message.startswith(f"override `train.betas={raw}` is not a list written as in a spec")
    assert "-s 'train.betas=[0.9, 0.99]'" in d.help
    code, _, err = run(capsys, "check", "--static", str(SPECS / "digits.gud"), "-s", f"train.betas={raw}")
    assert code == 2 and "error[E003]" in err and "Traceback" not in err


def test_a_quoted_string_override_reads_as_in_a_spec():
    (d,) = errors(HEAD, {"runtime.device": '"cuda:0'})
    assert d.code == "E003" and "is not a string written as in a spec" in d.message
    checked = check_text(HEAD, "t.gud", {"runtime.device": '"cuda:0"'})
    assert checked.spec.runtime.device == "cuda:0"
    assert check_text(HEAD, "t.gud", {"runtime.device": "cuda:0"}).spec.runtime.device == "cuda:0"


# ----------------------------------------------------------------------- betas of the wrong length
@pytest.mark.parametrize("value", ["[0.9]", "[0.9, 0.99, 0.5]", "0.9", "[2, 3]", "[0.9, 1]", '[0.9, "a"]'])
def test_betas_need_two_numbers_in_a_spec(value):
    diagnostics = errors(HEAD + f"train {{ betas = {value} }}\n")
    assert [d.code for d in diagnostics] == ["E210"]  # one message, not one per item, and not E206
    d = diagnostics[0]
    assert "`train.betas` needs two numbers (beta1, beta2), each in [0, 1)" in d.message
    assert "required" not in d.message and d.span.line == 6
    assert d.help == "for example `betas = [0.9, 0.999]`"
    assert_plain(diagnostics)


@pytest.mark.parametrize("value", ["[0.9]", "[0.9,0.99,0.5]", "0.9", "[2,3]"])
def test_betas_need_two_numbers_in_an_override(value):
    diagnostics = errors(HEAD, {"train.betas": value})
    assert [d.code for d in diagnostics] == ["E210"]
    assert diagnostics[0].message.startswith(f"override `train.betas={value}`: `train.betas` needs two numbers "
                                             "(beta1, beta2), each in [0, 1), got ")
    assert diagnostics[0].help == "for example -s 'train.betas=[0.9, 0.999]'"
    assert_plain(diagnostics)


# ----------------------------------------------------------------------- whole numbers
@pytest.mark.parametrize("block", ["train", "sample"])
def test_a_seed_beyond_64_bits_says_whole_number_and_range(block):
    want = f"`{block}.seed` must be a whole number from -2^63 to 2^63 - 1, got 1e20"
    (d,) = errors(HEAD + f"{block} {{ seed = 1e20 }}\n")
    assert d.code == "E210" and d.message == want
    (d,) = errors(HEAD, {f"{block}.seed": "1e20"})
    assert d.code == "E210" and d.message == f"override `{block}.seed=1e20`: {want}"


def test_a_train_seed_written_as_digits_beyond_64_bits_is_refused_before_training():
    # plain digits read as a whole number: train.seed reached torch.manual_seed and overflowed there
    (d,) = errors(HEAD + "train { seed = 100000000000000000000 }\n")
    assert d.code == "E210" and "`train.seed` must be a whole number from -2^63 to 2^63 - 1" in d.message
    assert check_text(HEAD + "train { seed = -5 }\n", "t.gud").spec.train.seed == -5


@pytest.mark.parametrize("key, least", [("train.steps", ">= 0"), ("train.batch", ">= 1"), ("sample.n", ">= 1"),
                                        ("sample.steps", "in [1, 1000000]"),
                                        ("train.seed", "from -2^63 to 2^63 - 1")])
def test_integer_settings_read_1e3_as_1000_and_refuse_fractions(key, least):
    block, _, name = key.partition(".")
    spec_1e3 = check_text(HEAD + f"{block} {{ {name} = 1e3 }}\n", "t.gud").spec
    over_1e3 = check_text(HEAD, "t.gud", {key: "1e3"}).spec
    assert getattr(getattr(spec_1e3, block), name) == getattr(getattr(over_1e3, block), name) == 1000
    (d,) = errors(HEAD + f"{block} {{ {name} = 2.5 }}\n")
    assert d.message == f"`{key}` must be a whole number {least}, got 2.5"
    (d,) = errors(HEAD, {key: "2.5"})
    assert d.message == f"override `{key}=2.5`: `{key}` must be a whole number {least}, got 2.5"


def test_a_sampler_step_count_beyond_a_million_is_refused_before_its_grid_fills_memory():
    (d,) = errors(HEAD, {"sample.steps": "1e9"})  # its time grid was a list of 10^9 floats (killed, 24 GB)
    assert d.code == "E210" and "in [1, 1000000]" in d.message


# ----------------------------------------------------------------------- other settings
CASES = [  # (setting, value, what the message says)
    ("train.lr", '"fast"', "`train.lr` must be a number > 0, got fast"),
    ("train.lr", "[1, 2]", "`train.lr` must be a number > 0, got [1, 2]"),
    ("train.batch", "-1", "`train.batch` must be a whole number >= 1, got -1"),
    ("train.ema", "1", "`train.ema` must be a number in [0, 1), got 1"),
    ("train.flip", "maybe", "`train.flip` must be true or false, got maybe"),
    ("sample.n", "0", "`sample.n` must be a whole number >= 1, got 0"),
    ("sample.rtol", "0", "`sample.rtol` must be a number >= 1e-12, got 0"),
    ("sample.sampler", "hen", "`sample.sampler` must be one of em, heun, midpoint, ddim, dpm2, dpmpp2m, "
                              "dpmpp3m, unipc, adaptive, got hen"),
    ("runtime.dtype", "half", "`runtime.dtype` must be one of float32, bfloat16, float64, got half"),
    ("runtime.compile", "maybe", "`runtime.compile` must be true or false, got maybe"),
    ("runtime.device", "3", "`runtime.device` must be a word or a quoted string, got 3"),
]


@pytest.mark.parametrize("key, value, want", CASES, ids=[f"{k}={v}" for k, v, _ in CASES])
def test_invalid_settings_say_what_the_setting_holds(key, value, want):
    block, _, name = key.partition(".")
    (d,) = errors(HEAD + f"{block} {{ {name} = {value} }}\n")
    assert d.code == "E210" and d.message == want and d.span.line == 6
    assert_plain([d])
    (d,) = errors(HEAD, {key: value})
    assert d.code == "E210" and d.message == f"override `{key}={value}`: {want}"
    assert_plain([d])


def test_did_you_mean_for_a_misspelt_choice():
    (d,) = errors(HEAD + "sample { sampler = hen }\n")
    assert d.help == "did you mean `heun`?"


def test_non_finite_settings_say_finite():
    (d,) = errors(HEAD, {"train.lr": "inf"})
    assert d.message == "override `train.lr=inf`: `train.lr` must be a finite number > 0, got inf"


def test_a_model_check_keeps_its_own_words():
    (d,) = errors(HEAD + "train { batch = 10; accumulate = 3 }\n")
    assert d.message == "in `train`: batch = 10 does not split into accumulate = 3 equal micro-batches"
    (d,) = errors(HEAD, {"train.accumulate": "3"})
    assert d.message == ("after the overrides, in `train`: batch = 128 does not split into accumulate = 3 "
                         "equal micro-batches")


def test_declaration_arguments_say_what_they_hold():
    (d,) = errors("gud 1\ndata = grf(size = 1)\ngamma_i(t) = linear(t)\n")
    assert d.message == "`data.size` must be a whole number in [2, 256], got 1"
    (d,) = errors("gud 1\ndata = npz(\"x.npz\", shape = [1, 8])\ngamma_i(t) = linear(t)\n")
    assert d.message == "`data.shape` needs three whole numbers (C, H, W), got [1, 8]"
    (d,) = errors(HEAD + "network = unet(channel_mult = 2)\n")
    assert d.message == "`network.channel_mult` needs a list of whole numbers, got 2"
    assert d.help == "for example `channel_mult = [1, 2]`"
    (d,) = errors("gud 1\ndata = npz()\ngamma_i(t) = linear(t)\n")
    assert d.code == "E206" and d.message == "`data.path` is required"  # a missing argument stays E206


def test_command_line_messages_have_no_raw_wording(capsys):
    for item in ("train.seed=1e20", "train.betas=[0.9]", "train.lr=fast", "runtime.compile=maybe"):
        code, _, err = run(capsys, "check", "--static", str(SPECS / "digits.gud"), "-s", item)
        assert code == 1 and "error[E210]" in err
        for raw in ("Input should", "Field required", "nable to parse", "Traceback", "Value error"):
            assert raw not in err


# ----------------------------------------------------------------------- declaration options
@pytest.mark.parametrize("key,value,written", [
    ("network.channels", "16", "network = unet(channels = 16)"),
    ("network.state", "channels", 'network = unet(state = "channels")'),
    ("network.channel_mult", "[1, 2, 2]", "network = unet(channel_mult = [1, 2, 2])"),
    ("basis.channels", "separate", 'basis = pca(channels = "separate")'),
    ("data.seed", "3", "data = digits(seed = 3)"),
])
def test_declaration_options_override_as_if_written_in_the_spec(key, value, written):
    head = HEAD.replace("data = digits()\n", "").replace("basis = pca()\n", "")
    declarations = {"data": "data = digits()", "basis": "basis = pca()", "network": "network = unet()"}
    block = key.split(".")[0]
    base = head + "\n".join(declarations.values()) + "\n"
    spelled = head + "\n".join(written if k == block else d for k, d in declarations.items()) + "\n"
    assert model_hash(check_text(base, "t.gud", {key: value}), FP) == model_hash(check_text(spelled, "t.gud"), FP)
    assert model_hash(check_text(base, "t.gud", {key: value}), FP) != model_hash(check_text(base, "t.gud"), FP)


@pytest.mark.parametrize("key,words", [
    ("network.stat", "network = unet(...) has no option `stat`"),
    ("network.kind", "has no option `kind`"),
    ("basis.levels", "basis = pca(...) has no option `levels`"),
    ("prior.s", "no such setting"),
])
def test_an_option_the_declaration_lacks_is_E202_with_its_options(key, words):
    (d,) = errors(HEAD + "network = unet()\n", {key: "1"})
    assert d.code == "E202" and words in d.message
    if key == "network.stat":
        assert d.help == "did you mean `state`?"


def test_a_network_option_set_on_the_command_line_trains_and_loads(capsys, tmp_path):
    import gudlang
    spec = tmp_path / "tiny.gud"
    spec.write_text(HEAD + "network = unet(channels = 8)\ntrain { steps = 2; batch = 8; sample_every = 0 }\n")
    code, _, err = run(capsys, "train", "--quiet", str(spec), "--out", str(tmp_path / "runs"), "--name", "r",
                       "-s", "network.state=channels")
    assert code == 0, err
    model = gudlang.load(tmp_path / "runs" / "r")
    assert model.eps_model.network.state_channels and model.sample(2).shape == (2, 1, 8, 8)
    # On the trained model it is fixed, as are the data, basis and training: E641, nothing written
    # (network.groups loaded and sampled another model under the same hash; basis.levels too).
    for key, value in (("network.groups", "2"), ("basis.channels", "mix"), ("data.seed", "3"), ("train.lr", "1")):
        with pytest.raises(GudError) as info:
            gudlang.load(tmp_path / "runs" / "r", params={key: value})
        assert info.value.diagnostics[0].code == "E641" and f"`{key}`" in str(info.value)
    code, _, err = run(capsys, "nll", str(tmp_path / "runs" / "r"), "-n", "1", "-s", "network.groups=2")
    assert code == 1 and "error[E641]" in err and "train a new run" in err
    assert not list((tmp_path / "runs" / "r").glob("nll-*.json"))
    assert gudlang.load(tmp_path / "runs" / "r", params={"sample.steps": "3", "runtime.device": "cpu"}).sample(1).shape \
        == (1, 1, 8, 8)


# ----------------------------------------------------------------------- the help a mistake gets
def test_a_setting_given_without_its_block_names_the_blocks_that_have_it():
    (d,) = errors(HEAD, {"steps": "300"})
    assert d.code == "E202" and d.help == "settings are named with their block: -s train.steps=300 or -s sample.steps=300"
    (d,) = errors(HEAD, {"lr": "1e-3"})
    assert d.help == "settings are named with their block: -s train.lr=1e-3"


def test_a_param_written_per_component_suggests_the_param():
    (d,) = errors(HEAD.replace("gamma_i(t) = linear(t)", "param a = 1\ngamma_i(t) = soft(t, rank(i), a = a_i)"))
    assert d.code == "E202" and d.help == "did you mean `a`? a param has no `_i`"


def test_check_says_how_many_components_a_spec_gives(capsys):
    code, out, _ = run(capsys, "check", str(SPECS / "inpainting.gud"))
    assert code == 0 and "48 of 64 components given" in out


def test_training_with_a_drawn_param_fixed_says_it_trains_one_model(capsys, tmp_path):
    argv = ["train", "--quiet", str(SPECS / "family.gud"), "--out", str(tmp_path), "-s", "train.steps=1",
            "-s", "train.batch=4", "-s", "train.sample_every=0"]
    assert main(argv + ["-s", "a=0.8"]) == 0
    err = capsys.readouterr().err
    assert "warning[W204]: -s a=0.8 fixes param `a`, which the spec draws from uniform(0.4, 1.6)" in err
    assert main(argv) == 0 and "W204" not in capsys.readouterr().err


def test_an_error_from_an_overridden_declaration_names_the_override(capsys):
    # the excerpt underlines `channels = 32` in the spec: the note says which value was used
    code, _, err = run(capsys, "check", str(SPECS / "digits.gud"), "-s", "network.channels=3")
    assert code == 1 and "error[E612]" in err
    assert "= note: with -s network.channels=3 (the line shows the spec's own values)" in err
