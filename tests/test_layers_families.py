"""The KAN families besides B-splines (kanlib.layers: rbf, rswaf, relu_kan, chebyshev) against their published
formulas written out here, at odd sizes, with float64 gradient checks; and the converters from efficient-kan and
fast-kan, checked against those libraries' forward formulas rebuilt from their documented definitions."""
import math

import pytest
import torch
import torch.nn.functional as F

from kanlib import KAN, RBFKAN, RSWAFKAN, BSplineKAN, ChebyKAN, KANConv2d, ReLUKAN

SIZES = [(1, 1, 1), (7, 3, 5), (33, 17, 4)]  # (batch, in, out)


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rbf_formula(layer, x):
    """FastKAN: phi_s(u) = exp(-((u - u_s) / h)^2) of the layer-normed input, summed with weights, plus
    silu(x) through the base weights and the bias."""
    u = layer_norm(x, layer.layernorm.weight, layer.layernorm.bias)
    out = torch.zeros(x.shape[0], layer.out_features, dtype=x.dtype)
    w = layer.weight.view(layer.in_features, layer.n_basis, layer.out_features)
    for i in range(layer.in_features):
        for s, point in enumerate(layer.grid):
            out += torch.exp(-((u[:, i:i + 1] - point) / layer.width) ** 2) * w[i, s]
    return out + F.silu(x) @ layer.base_weight + layer.bias


def rswaf_formula(layer, x):
    u = layer_norm(x, layer.layernorm.weight, layer.layernorm.bias)
    w = layer.weight.view(layer.in_features, layer.n_basis, layer.out_features)
    phi = 1 - torch.tanh((u[:, :, None] - layer.grid) * layer.inv_width) ** 2
    return torch.einsum("nis,iso->no", phi, w)


def relu_formula(layer, x):
    """ReLU-KAN: R_s(x) = [relu(e_s - x) relu(x - s_s)]^2 * 16 / (e_s - s_s)^4."""
    w = layer.weight.view(layer.in_features, layer.n_basis, layer.out_features)
    u = x[:, :, None]
    bumps = (F.relu(layer.ends - u) * F.relu(u - layer.starts)) ** 2 * 16 / (layer.ends - layer.starts) ** 4
    return torch.einsum("nis,iso->no", bumps, w) + layer.bias


def cheby_formula(layer, x):
    """ChebyKAN: T_d(tanh x) = cos(d arccos(tanh x))."""
    w = layer.weight.view(layer.in_features, layer.n_basis, layer.out_features)
    theta = torch.acos(torch.tanh(x).clamp(-1, 1))[:, :, None]
    polys = torch.cos(theta * torch.arange(layer.degree + 1, dtype=x.dtype))
    return torch.einsum("nid,ido->no", polys, w)


FAMILIES = {
    "rbf": (lambda i, o: RBFKAN(i, o, grid_size=7, grid_range=(-1.5, 2.0)), rbf_formula),
    "rswaf": (lambda i, o: RSWAFKAN(i, o, grid_size=9), rswaf_formula),
    "relu": (lambda i, o: ReLUKAN(i, o, grid_size=5, spline_order=2, grid_range=(-1.0, 1.0)), relu_formula),
    "chebyshev": (lambda i, o: ChebyKAN(i, o, degree=5), cheby_formula),
}


def randomized(layer, seed):
    """Every parameter drawn afresh, so that no default (zeros, ones) hides a term of the formula."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if name in ("starts", "ends"):
                continue
            parameter.copy_(torch.randn(parameter.shape, generator=gen, dtype=parameter.dtype) * 0.5
                            + (1.0 if name in ("inv_width", "layernorm.weight") else 0.0))
    return layer


@pytest.mark.parametrize("batch,n_in,n_out", SIZES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_computes_its_published_formula(family, batch, n_in, n_out):
    build, formula = FAMILIES[family]
    layer = randomized(build(n_in, n_out).double(), seed=batch + n_in)
    gen = torch.Generator().manual_seed(n_out)
    x = torch.randn(batch, n_in, generator=gen, dtype=torch.float64) * 2  # inside and well outside the grids
    torch.testing.assert_close(layer(x), formula(layer, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.activations(x).sum(1) + (layer.bias if layer.bias is not None else 0),
                               layer(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["auto", "cpu"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gradcheck_float64(family, backend):
    layer = randomized(FAMILIES[family][0](3, 2).double(), seed=1)
    layer.backend = backend  # the basis' own parameters (RSWAF's inv_width, ReLU's bounds) train in both
    x = (torch.randn(5, 3, dtype=torch.float64) * 1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *[p for p in layer.parameters() if p.requires_grad]))


@pytest.mark.parametrize("backend", ["eager", "cpu", "auto"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_an_empty_batch_gives_an_empty_output_and_zero_gradients(family, backend):
    layer = FAMILIES[family][0](3, 2)
    layer.backend = backend
    x = torch.empty(0, 3, requires_grad=True)
    out = layer(x)
    assert out.shape == (0, 2)
    trainable = [p for p in layer.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.sum(), (x, *trainable))
    assert grads[0].shape == (0, 3) and all(not g.any() for g in grads[1:])
    assert layer(torch.empty(2, 0, 3)).shape == (2, 0, 2)


@pytest.mark.parametrize("family", [BSplineKAN, RBFKAN, RSWAFKAN, ReLUKAN, ChebyKAN], ids=lambda f: f.__name__)
def test_activations_keep_leading_dimensions_as_forward_does(family):
    layer = family(3, 2, bias=True, dtype=torch.float64)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    edges = layer.activations(x)
    assert edges.shape == (2, 4, 3, 2) and layer.activations(x[0, 0]).shape == (3, 2)
    torch.testing.assert_close(edges, layer.activations(x.reshape(8, 3)).view(2, 4, 3, 2), rtol=0, atol=0)
    torch.testing.assert_close(edges.sum(-2) + layer.bias, layer(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", [RBFKAN, RSWAFKAN, ReLUKAN, ChebyKAN], ids=lambda f: f.__name__)
@pytest.mark.parametrize("bias", [False, True])
def test_under_cpu_autocast_the_output_is_in_the_autocast_dtype_with_or_without_bias(family, bias):
    layer = family(3, 2, bias=bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.rand(4, 3)).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["bspline", *sorted(FAMILIES)])
def test_kan_conv2d_takes_an_empty_batch(family):
    conv = KANConv2d(4, 6, kernel_size=3, padding=1, groups=2, layer=family)
    x = torch.empty(0, 4, 7, 5, requires_grad=True)
    out = conv(x)
    assert out.shape == (0, 6, 7, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_kan_of_each_family_trains_and_keeps_leading_dimensions(family):
    model = KAN([2, 5, 1], layer=family, seed=0)
    x = torch.rand(4, 3, 2)
    assert model(x).shape == (4, 3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = torch.rand(64, 2) * 2 - 1
    target = torch.sin(math.pi * data[:, :1]) * data[:, 1:]
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.mse_loss(model(data), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_chebyshev_gradients_stay_finite_where_tanh_saturates():
    layer = ChebyKAN(2, 3, degree=6).double()
    x = torch.tensor([[40.0, -40.0]], dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("build,error,words", [
    (lambda: RBFKAN(3, 2, grid_size=1), ValueError, "grid_size must be an int >= 2, got 1"),
    (lambda: RBFKAN(3, 2, grid_range=(1.0, -1.0)), ValueError, "grid_range must have low < high"),
    (lambda: RBFKAN(3, 2, width=0.0), ValueError, "width must be a finite number > 0"),
    (lambda: RSWAFKAN(3, 2, inv_width=-1.0), ValueError, "inv_width must be a finite number > 0"),
    (lambda: ReLUKAN(3, 2, spline_order=-1), ValueError, "spline_order must be an int >= 0"),
    (lambda: ChebyKAN(3, 2, degree=2.5), TypeError, "degree must be an int >= 0, got 2.5"),
    (lambda: RBFKAN(0, 2), ValueError, "in_features must be an int >= 1, got 0"),
    (lambda: RBFKAN(3, 2, base_activation="gelu"), ValueError, "base_activation must be one of"),
    (lambda: KAN([2, 1], layer="wavelet"), ValueError, "layer must be one of ['bspline', 'chebyshev', 'rbf', 'relu', "
                                                        "'rswaf']"),
])
def test_bad_settings_are_named(build, error, words):
    with pytest.raises(error) as info:
        build()
    assert words in str(info.value)


def test_bad_inputs_are_named():
    layer = RBFKAN(3, 2)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\), got \(4, 2\)"):
        layer(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        layer(torch.zeros(4, 3, dtype=torch.int64))


# --- converters -------------------------------------------------------------------------------------------


def efficient_kan_state(n_in, n_out, grid_size, k, seed, scaler=True):
    """A state dict of efficient-kan's KANLinear as its documentation defines it: a uniform grid of
    ``grid_size`` intervals on [-1, 1] extended by k intervals on each side, and random weights."""
    gen = torch.Generator().manual_seed(seed)
    h = 2 / grid_size
    grid = (torch.arange(-k, grid_size + k + 1, dtype=torch.float64) * h - 1).expand(n_in, -1).contiguous()
    state = {"grid": grid, "base_weight": torch.randn(n_out, n_in, generator=gen, dtype=torch.float64),
             "spline_weight": torch.randn(n_out, n_in, grid_size + k, generator=gen, dtype=torch.float64)}
    if scaler:
        state["spline_scaler"] = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
    return state


def efficient_kan_forward(state, x, k):
    """efficient-kan's KANLinear output: silu(x) through base_weight, plus the order-k B-spline bases of x
    (Cox-de Boor on the grid, half-open intervals) through spline_weight scaled by spline_scaler."""
    grid = state["grid"]
    u = x.unsqueeze(-1)
    bases = ((u >= grid[:, :-1]) & (u < grid[:, 1:])).to(x.dtype)
    for p in range(1, k + 1):
        left = (u - grid[:, :-(p + 1)]) / (grid[:, p:-1] - grid[:, :-(p + 1)]) * bases[..., :-1]
        right = (grid[:, p + 1:] - u) / (grid[:, p + 1:] - grid[:, 1:-p]) * bases[..., 1:]
        bases = left + right
    weights = state["spline_weight"] * state.get("spline_scaler", torch.ones(1, dtype=x.dtype)).unsqueeze(-1)
    return F.silu(x) @ state["base_weight"].t() + bases.reshape(x.shape[0], -1) @ weights.reshape(
        weights.shape[0], -1).t()


@pytest.mark.parametrize("n_in,n_out,grid_size,k,scaler", [(3, 2, 5, 3, True), (7, 5, 4, 2, False),
                                                            (1, 1, 1, 1, True)])
def test_from_efficient_kan_is_exact(n_in, n_out, grid_size, k, scaler):
    state = efficient_kan_state(n_in, n_out, grid_size, k, seed=n_in, scaler=scaler)
    layer = BSplineKAN.from_efficient_kan(state)
    x = torch.rand(29, n_in, dtype=torch.float64) * 3 - 1.5  # inside and outside [-1, 1]
    torch.testing.assert_close(layer(x), efficient_kan_forward(state, x, k), rtol=1e-12, atol=1e-12)


def fastkan_state(n_in, n_out, num_grids, seed, base=True):
    """A state dict of fast-kan's FastKANLayer as documented: LayerNorm, Gaussian RBFs on linspace(-2, 2),
    spline_linear [O, I*S] and the base update base_linear."""
    gen = torch.Generator().manual_seed(seed)
    state = {"layernorm.weight": torch.rand(n_in, generator=gen, dtype=torch.float64) + 0.5,
             "layernorm.bias": torch.randn(n_in, generator=gen, dtype=torch.float64) * 0.1,
             "rbf.grid": torch.linspace(-2, 2, num_grids, dtype=torch.float64),
             "spline_linear.weight": torch.randn(n_out, n_in * num_grids, generator=gen, dtype=torch.float64)}
    if base:
        state["base_linear.weight"] = torch.randn(n_out, n_in, generator=gen, dtype=torch.float64)
        state["base_linear.bias"] = torch.randn(n_out, generator=gen, dtype=torch.float64)
    return state


def fastkan_forward(state, x):
    """FastKANLayer: exp(-((LayerNorm(x) - grid) / h)^2), h the grid spacing, flattened input-major through
    spline_linear, plus base_linear(silu(x))."""
    grid = state["rbf.grid"]
    u = layer_norm(x, state["layernorm.weight"], state["layernorm.bias"])
    phi = torch.exp(-((u[..., None] - grid) / (grid[1] - grid[0])) ** 2)
    out = phi.reshape(x.shape[0], -1) @ state["spline_linear.weight"].t()
    if "base_linear.weight" in state:
        out = out + F.silu(x) @ state["base_linear.weight"].t() + state["base_linear.bias"]
    return out


@pytest.mark.parametrize("n_in,n_out,num_grids,base", [(3, 2, 8, True), (5, 7, 3, False), (1, 1, 2, True)])
def test_from_fastkan_is_exact(n_in, n_out, num_grids, base):
    state = fastkan_state(n_in, n_out, num_grids, seed=n_out, base=base)
    layer = RBFKAN.from_fastkan(state)
    x = torch.randn(13, n_in, dtype=torch.float64) * 3
    torch.testing.assert_close(layer(x), fastkan_forward(state, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("convert,state,words", [
    (BSplineKAN.from_efficient_kan, {"grid": torch.zeros(3, 12)}, "missing ['base_weight', 'spline_weight']"),
    (BSplineKAN.from_efficient_kan, {**efficient_kan_state(3, 2, 5, 3, 0), "base_weight": torch.zeros(2, 4)},
     "expected grid [I, G+2k+1], base_weight [O, I], spline_weight [O, I, G+k]"),
    (RBFKAN.from_fastkan, efficient_kan_state(3, 2, 5, 3, 0), "expected a FastKANLayer state dict"),
    (RBFKAN.from_fastkan, {**fastkan_state(3, 2, 8, 0), "spline_linear.weight": torch.zeros(2, 20)},
     "expected rbf.grid [S] and spline_linear.weight [O, I*S] with I = 3"),
    (RBFKAN.from_fastkan, {**fastkan_state(3, 2, 4, 0), "rbf.grid": torch.tensor([0.0, 1.0, 3.0, 4.0])},
     "expected an evenly spaced rbf.grid"),
])
def test_converters_name_a_state_dict_of_another_library_or_shape(convert, state, words):
    with pytest.raises(ValueError) as info:
        convert(state)
    assert words in str(info.value)


# --- convolutions -----------------------------------------------------------------------------------------


def conv_by_loops(conv, x):
    """Each output pixel of each group: that group's KAN layer on the flattened receptive field (channel, row,
    column order, as nn.Conv2d's weight is laid out), zeros outside the input."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = conv.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    n, height, width = x.shape[0], padded.shape[-2], padded.shape[-1]
    out_h, out_w = (height - dh * (kh - 1) - 1) // sh + 1, (width - dw * (kw - 1) - 1) // sw + 1
    per_group_in, per_group_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    out = torch.zeros(n, conv.out_channels, out_h, out_w, dtype=x.dtype)
    for g, kan in enumerate(conv.kans):
        channels = padded[:, g * per_group_in:(g + 1) * per_group_in]
        for r in range(out_h):
            for c in range(out_w):
                field = channels[:, :, r * sh:r * sh + dh * (kh - 1) + 1:dh, c * sw:c * sw + dw * (kw - 1) + 1:dw]
                out[:, g * per_group_out:(g + 1) * per_group_out, r, c] = kan(field.reshape(n, -1))
    return out


@pytest.mark.parametrize("family", ["bspline", "rbf", "chebyshev"])
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3), dict(kernel_size=(2, 3), stride=2, padding=1),
    dict(kernel_size=2, dilation=2, padding=(1, 0)), dict(kernel_size=3, groups=2, stride=(1, 2)),
])
def test_kan_conv2d_applies_the_layer_to_every_receptive_field(family, kwargs):
    torch.manual_seed(0)
    conv = KANConv2d(4, 6, layer=family, **kwargs).double()
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(conv(x), conv_by_loops(conv, x), rtol=1e-10, atol=1e-10)
    assert conv(x[0]).shape == conv(x).shape[1:]


def test_kan_conv2d_same_padding_keeps_the_size_and_matches_explicit_padding():
    torch.manual_seed(1)
    same = KANConv2d(2, 3, kernel_size=3, padding="same", layer="chebyshev").double()
    explicit = KANConv2d(2, 3, kernel_size=3, padding=1, layer="chebyshev").double()
    explicit.load_state_dict(same.state_dict())
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64)
    assert same(x).shape == (1, 3, 5, 4)
    torch.testing.assert_close(same(x), explicit(x))


def test_kan_conv2d_gradcheck_float64():
    conv = KANConv2d(2, 2, kernel_size=2, stride=1, layer="bspline", grid_size=3).double()
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))


@pytest.mark.parametrize("build,x,words", [
    (lambda: KANConv2d(3, 4, kernel_size=5), torch.zeros(1, 3, 4, 4),
     "the kernel reaches (5, 5) (kernel_size (5, 5), dilation (1, 1)), more than the padded input (4, 4)"),
    (lambda: KANConv2d(3, 4, kernel_size=2), torch.zeros(1, 2, 4, 4), "input must have shape (N, 3, H, W)"),
    (lambda: KANConv2d(3, 4, kernel_size=2, groups=2), None, "divisible by groups, got 3, 4 and groups=2"),
    (lambda: KANConv2d(3, 4, kernel_size=3, stride=2, padding="same"), None, "padding='same' needs stride 1"),
    (lambda: KANConv2d(3, 4, kernel_size=0), None, "kernel_size must be an int >= 1, got 0"),
])
def test_kan_conv2d_bad_settings_and_inputs_are_named(build, x, words):
    with pytest.raises(ValueError) as info:
        build()(x)
    assert words in str(info.value)
