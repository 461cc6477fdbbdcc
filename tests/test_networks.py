"""Networks: eps = net(x (B, C, H, W), gamma (B, D)) keeps the shape of x, depends on the
whole noising state, trains, is deterministic under a seed, and rejects bad options."""

import inspect
import math

import pytest
import torch

from gudlang import spec
from gudlang.diagnostics import GudError
from gudlang.networks import (MLP, NETWORK_OPTIONS, NoiseStateEmbedding, UNet,
                              count_parameters, make_network)

CASES = [
    ("mlp", (1, 8, 8), {"hidden": 32, "depth": 2}),
    ("mlp", (2, 3, 5), {"hidden": 16, "depth": 1}),
    ("unet", (1, 8, 8), {}),
    ("unet", (1, 28, 28), {"channels": 16}),
    ("unet", (3, 32, 32), {"channels": 16, "channel_mult": (1, 2, 2),
                           "attention_resolutions": (8,)}),
    ("unet", (1, 7, 9), {"channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 2,
                         "attention_resolutions": (4,), "groups": 4}),
    ("unet", (3, 16, 16), {"channels": 8, "state": "channels"}),
    ("unet", (1, 7, 9), {"channels": 8, "channel_mult": (1, 2, 2), "groups": 4, "state": "channels"}),
]
IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape, _ in CASES]


def inputs(shape, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    return torch.randn(batch, *shape, generator=g), 4 * torch.randn(batch, d, generator=g)


@torch.no_grad()
def perturb_zero_init(net):
    """Give the zero-initialised output layer weights so that outputs are not all zero."""
    torch.manual_seed(123)
    torch.nn.init.normal_(net.out.weight, std=0.05)
    torch.nn.init.normal_(net.out.bias, std=0.05)


@pytest.mark.parametrize("name,shape,options", CASES, ids=IDS)
def test_output_has_the_shape_of_the_input(name, shape, options):
    net = make_network(name, shape, **options)
    x, gamma = inputs(shape)
    eps = net(x, gamma)
    assert eps.shape == x.shape and eps.dtype == x.dtype


@pytest.mark.parametrize("name,shape,options", CASES, ids=IDS)
def test_output_starts_at_zero(name, shape, options):
    net = make_network(name, shape, **options)
    assert torch.count_nonzero(net(*inputs(shape))) == 0


@pytest.mark.parametrize("name,shape,options", CASES[::2], ids=IDS[::2])
def test_output_depends_on_gamma(name, shape, options):
    torch.manual_seed(0)
    net = make_network(name, shape, **options)
    perturb_zero_init(net)
    x, gamma = inputs(shape)
    assert not torch.allclose(net(x, gamma), net(x, gamma + 1.0))


def test_noise_state_layer_starts_as_mean_pooling():
    torch.manual_seed(0)
    embed = NoiseStateEmbedding(dim=16, emb=8)
    gamma = torch.linspace(-10, 5, 16)[None]
    permuted = gamma[:, torch.randperm(16)]
    assert torch.allclose(embed(gamma), embed(permuted), atol=1e-6)
    # Once trained (here: perturbed), the components are told apart.
    with torch.no_grad():
        embed.state.weight.add_(0.1 * torch.randn_like(embed.state.weight))
    assert not torch.allclose(embed(gamma), embed(permuted), atol=1e-6)


@pytest.mark.parametrize("name,shape,options", CASES[::2], ids=IDS[::2])
def test_gradient_reaches_every_parameter(name, shape, options):
    torch.manual_seed(0)
    net = make_network(name, shape, **options)
    perturb_zero_init(net)
    x, gamma = inputs(shape)
    net(x, gamma).square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_same_seed_gives_the_same_network_and_output():
    def build():
        torch.manual_seed(7)
        net = make_network("unet", (1, 8, 8), attention_resolutions=(4,))
        perturb_zero_init(net)
        return net, net(*inputs((1, 8, 8)))

    (a, out_a), (b, out_b) = build(), build()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
    assert torch.equal(out_a, out_b)


def test_mlp_learns_a_small_denoising_problem():
    """Data on a 2-dimensional subspace of R^16: eps is largely predictable from x_t."""
    torch.manual_seed(0)
    shape, d = (1, 4, 4), 16
    basis = torch.linalg.qr(torch.randn(d, 2))[0]
    data = 3 * torch.randn(256, 2) @ basis.T
    net = MLP(shape, hidden=64, depth=2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def loss_on(batch_seed):
        g = torch.Generator().manual_seed(batch_seed)
        x0 = data[torch.randint(0, 256, (128,), generator=g)]
        gamma = (torch.rand(128, 1, generator=g) * 10 - 6).expand(128, d)
        eps = torch.randn(128, d, generator=g)
        xt = torch.sigmoid(-gamma).sqrt() * x0 + torch.sigmoid(gamma).sqrt() * eps
        return (net(xt.view(128, *shape), gamma).view(128, d) - eps).square().mean()

    with torch.no_grad():
        before = sum(loss_on(10_000 + i).item() for i in range(4)) / 4
    for step in range(300):
        opt.zero_grad()
        loss_on(step).backward()
        opt.step()
    with torch.no_grad():
        after = sum(loss_on(10_000 + i).item() for i in range(4)) / 4
    assert before == pytest.approx(1.0, abs=0.1)
    assert after < 0.35 * before


def test_network_options_match_constructor_defaults():
    for name, cls in (("mlp", MLP), ("unet", UNet)):
        params = inspect.signature(cls).parameters
        defaults = {k: p.default for k, p in params.items() if k != "shape"}
        assert defaults == NETWORK_OPTIONS[name]


def test_network_options_match_the_spec_defaults():
    for name, model in (("mlp", spec.MlpNetwork), ("unet", spec.UNetNetwork)):
        fields = model().model_dump()
        fields.pop("kind")
        assert fields == NETWORK_OPTIONS[name]


def test_count_parameters_counts_trainable_scalars():
    net = make_network("mlp", (1, 2, 2), hidden=4, depth=1)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    net.inp.weight.requires_grad_(False)
    assert count_parameters(net) == sum(p.numel() for p in net.parameters()) - 16


def error_of(call):
    with pytest.raises(GudError) as info:
        call()
    return info.value.diagnostics[0]


def test_unknown_network_is_e610_with_suggestion():
    d = error_of(lambda: make_network("unte", (1, 8, 8)))
    assert d.code == "E610" and "`mlp`, `unet`" in d.message and d.help == "did you mean `unet`?"


def test_unknown_option_is_e611_listing_valid_options():
    d = error_of(lambda: make_network("unet", (1, 8, 8), chanels=16))
    assert d.code == "E611" and "`channels`" in d.message and "`groups`" in d.message
    assert d.help == "did you mean `channels`?"


@pytest.mark.parametrize("shape,options,words", [
    ((1, 8, 8), {"channel_mult": (1, 2, 2, 2, 2)}, "too small"),
    ((1, 8, 8), {"attention_resolutions": (16,)}, "not feature-map sizes"),
    ((1, 8, 8), {"groups": 5}, "divisible by 5"),
    ((1, 8, 8), {"channels": 0}, "positive integer"),
    ((1, 8, 8), {"channel_mult": ()}, "non-empty"),
    ((1, 8, 8), {"dropout": 1.0}, "[0, 1)"),
    ((64,), {}, "image-shaped"),
    ((1, 8, 8), {"state": "channel"}, "did you mean"),
], ids=["too-many-levels", "attention-size", "groups", "channels", "channel-mult",
        "dropout", "not-an-image", "state"])
def test_incompatible_unet_options_are_e612(shape, options, words):
    d = error_of(lambda: make_network("unet", shape, **options))
    assert d.code == "E612" and words in d.message + str(d.help)


def test_state_channels_keep_the_unet_size_independent_of_the_image_size():
    # the full state map has 2 D x emb weights: 4 * 32 = 128 wide, 2 * 3 * 64 * 64 long here
    def size(shape, state):
        return count_parameters(make_network("unet", shape, state=state))

    assert size((3, 64, 64), "channels") == size((3, 16, 16), "channels")
    assert size((3, 64, 64), "linear") - size((3, 16, 16), "linear") == 2 * 3 * (64 * 64 - 16 * 16) * 128
    assert size((3, 64, 64), "channels") < size((3, 64, 64), "linear") / 5


def test_state_channels_give_the_unet_each_components_noise_level_at_its_place():
    # pixel basis layout: component k = (c, i, j). A change of gamma at one pixel moves the
    # output most near that pixel; with only the component means, the place would not matter.
    torch.manual_seed(0)
    net = make_network("unet", (1, 16, 16), channels=8, channel_mult=(1,), state="channels")
    perturb_zero_init(net)
    x, gamma = inputs((1, 16, 16), batch=1)
    gamma = gamma.requires_grad_()
    jac = torch.autograd.grad(net(x, gamma)[0, 0, 3, 3], gamma)[0].view(16, 16).abs()
    # far away only the means and the group norms' statistics carry it
    assert float(jac[2:5, 2:5].max()) > 5 * float(jac[9:, 9:].max())
    jac = torch.autograd.grad(net(x, gamma)[0, 0, 12, 12], gamma)[0].view(16, 16).abs()
    assert float(jac[11:14, 11:14].max()) > 5 * float(jac[:6, :6].max())


def test_wrong_input_shape_is_e613():
    net = make_network("mlp", (1, 4, 4), hidden=8, depth=1)
    x, gamma = inputs((1, 4, 4))
    assert error_of(lambda: net(x[:, :, :3], gamma)).code == "E613"
    assert error_of(lambda: net(x, gamma[:, :8])).code == "E613"
    assert error_of(lambda: net(x, gamma[:2])).code == "E613"
