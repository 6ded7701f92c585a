"""kanlib.SparseBSplineKAN and KAN.to_sparse / to_dense: the same function as the dense masked layers they come
from, exact round trips, fine-tuning, state dicts, and the errors for bad edges, inputs and conversions."""
import io

import pytest
import torch
from conftest import inputs_around

from kanlib import KAN, BSplineKAN, SparseBSplineKAN, fit
from kanlib.quant.qat import QATBSplineKAN, QATConfig


def masked_layer(seed, n_in=7, n_out=5, dead=0.6, bias=False, dtype=torch.float64, **kwargs):
    """A BSplineKAN with a random 0/1 mask and non-trivial parameters (and bias)."""
    torch.manual_seed(seed)
    layer = BSplineKAN(n_in, n_out, bias=bias, dtype=dtype, **kwargs)
    with torch.no_grad():
        layer.mask.copy_((torch.rand(n_in, n_out) >= dead).to(dtype))
        layer.coef.normal_()
        layer.scale_sp.uniform_(-1, 1)
        if bias:
            layer.bias.normal_()
    return layer


def pruned_kan(seed, widths=(5, 7, 3), dead=0.6, **kwargs):
    torch.manual_seed(seed)
    model = KAN(list(widths), dtype=torch.float64, bias=True, **kwargs)
    with torch.no_grad():
        for layer in model.layers:
            layer.mask.copy_((torch.rand_like(layer.mask) >= dead).double())
            layer.bias.normal_()
    return model


def test_from_dense_computes_the_masked_layer():
    layer = masked_layer(0, bias=True)
    layer.update_grid(torch.randn(50, 7, dtype=torch.float64))  # a non-uniform grid
    sparse = SparseBSplineKAN.from_dense(layer)
    assert sparse.n_edges == int(layer.mask.sum()) and sparse.density == pytest.approx(layer.mask.mean().item())
    x = inputs_around(layer.grid, 17, torch.Generator().manual_seed(1), outside=0.3, dtype=torch.float64)
    for backend in ("auto", "eager", "cpu"):
        sparse.backend = backend
        torch.testing.assert_close(sparse(x), layer(x), rtol=1e-12, atol=1e-12)
    batched = x.view(17, 1, 7).expand(17, 2, 7)
    torch.testing.assert_close(sparse(batched), layer(batched), rtol=1e-12, atol=1e-12)


def test_round_trips_are_exact():
    layer = masked_layer(1, bias=True)
    sparse = SparseBSplineKAN.from_dense(layer)
    dense = sparse.to_dense()
    assert type(dense) is BSplineKAN and torch.equal(dense.mask, layer.mask)
    live = layer.mask.bool()
    for name in ("coef", "scale_base", "scale_sp"):
        assert torch.equal(getattr(dense, name)[live], getattr(layer, name)[live])
        assert not bool(getattr(dense, name)[~live].any())  # dead edges hold zeros
    assert torch.equal(dense.grid, layer.grid) and torch.equal(dense.bias, layer.bias)
    again = SparseBSplineKAN.from_dense(dense)
    assert sparse.state_dict().keys() == again.state_dict().keys()
    for key, value in sparse.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    x = torch.randn(9, 7, dtype=torch.float64)
    assert torch.equal(dense(x), layer(x)) or torch.allclose(dense(x), layer(x), rtol=1e-13, atol=1e-13)


def test_kan_to_sparse_and_back():
    model = pruned_kan(2)
    model.layers[0].update_grid(torch.randn(40, 5, dtype=torch.float64))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    sparse = model.to_sparse()
    assert all(type(layer) is SparseBSplineKAN for layer in sparse.layers)
    assert all(type(layer) is BSplineKAN for layer in model.layers)  # the original is untouched
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    x = inputs_around(model.layers[0].grid, 33, torch.Generator().manual_seed(3), outside=0.5, dtype=torch.float64)
    torch.testing.assert_close(sparse(x), model(x), rtol=1e-12, atol=1e-12)
    dense = sparse.to_dense()
    assert all(type(layer) is BSplineKAN for layer in dense.layers)
    torch.testing.assert_close(dense(x), model(x), rtol=1e-12, atol=1e-12)
    assert dense.widths == model.widths == sparse.widths


def test_kan_to_sparse_refuses_other_families_and_layer_errors():
    with pytest.raises(TypeError, match="layer 0 is RBFKAN"):
        KAN([3, 2], layer="rbf").to_sparse()
    model = pruned_kan(3)
    with torch.no_grad():
        model.layers[1].mask[0, 0] = 0.5
    with pytest.raises(ValueError, match="layer 1.*0 \\(dead\\) and 1"):
        model.to_sparse()


def test_kan_methods_that_need_dense_layers_say_so():
    sparse = pruned_kan(4).to_sparse()
    x = torch.randn(8, 5, dtype=torch.float64)
    for method in ("prune", "attribute"):
        with pytest.raises(TypeError, match=f"KAN.{method} needs BSplineKAN layers; layer 0 is SparseBSplineKAN"):
            getattr(sparse, method)(x=x)
    with pytest.raises(TypeError, match="update_grid"):
        sparse.update_grid(x)


def test_fine_tuning_decreases_the_loss():
    torch.manual_seed(5)
    x = torch.rand(128, 3, dtype=torch.float64) * 2 - 1
    data = {"train_input": x[:96], "train_label": (torch.sin(3 * x[:, :1]) + x[:, 1:2] * x[:, 2:]),
            "test_input": x[96:]}
    data["train_label"], data["test_label"] = data["train_label"][:96], data["train_label"][96:]
    model = pruned_kan(5, widths=(3, 4, 1), dead=0.3).to_sparse()
    edges = [layer.edges.clone() for layer in model.layers]
    history = fit(model, data, steps=15, lr=1e-2, progress=False)
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(torch.equal(layer.edges, e) for layer, e in zip(model.layers, edges))  # dead edges stay dead
    assert all(layer.coef.grad is not None for layer in model.layers)


def test_every_parameter_gets_a_gradient():
    sparse = SparseBSplineKAN.from_dense(masked_layer(6, bias=True))
    x = torch.randn(11, 7, dtype=torch.float64, requires_grad=True)
    sparse(x).square().sum().backward()
    assert x.grad is not None
    for name, parameter in sparse.named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.any()), name


def test_state_dict_round_trip():
    sparse = SparseBSplineKAN.from_dense(masked_layer(7, bias=True))
    buffer = io.BytesIO()
    torch.save(sparse.state_dict(), buffer)
    buffer.seek(0)
    fresh = SparseBSplineKAN(7, 5, sparse.edges, bias=True, dtype=torch.float64)
    fresh.load_state_dict(torch.load(buffer))
    x = torch.randn(6, 7, dtype=torch.float64)
    assert torch.equal(fresh(x), sparse(x))


@pytest.mark.parametrize("backend", ["cpu", "eager"])
def test_edge_buffers_in_any_memory_layout_give_the_same_outputs_and_gradients(backend):
    """Loaded with assign=True, a state dict's edge buffers are the layer's own, here column views of an [E, 2] edge
    table: equal values, stride 2. The CPU kernels read them as contiguous and returned wrong outputs and
    gradients."""
    source = SparseBSplineKAN.from_dense(masked_layer(21, bias=True))
    source.backend = backend
    state = source.state_dict()
    table = source.edges.clone()
    state["edge_inputs"], state["edge_outputs"] = table[:, 0], table[:, 1]
    state["input_offsets"] = torch.stack([state["input_offsets"]] * 2, dim=1)[:, 1]
    loaded = SparseBSplineKAN(7, 5, source.edges, bias=True, dtype=torch.float64, backend=backend)
    loaded.load_state_dict(state, assign=True)
    assert not loaded.edge_outputs.is_contiguous() and not loaded.input_offsets.is_contiguous()
    x = inputs_around(loaded.grid, 19, torch.Generator().manual_seed(21), outside=0.5,
                      dtype=torch.float64).requires_grad_()
    grad_out = torch.randn(19, 5, dtype=torch.float64)
    got, want = loaded(x), source(x)
    assert torch.equal(got, want)
    for a, b in zip(torch.autograd.grad(got, [x, *loaded.parameters()], grad_out),
                    torch.autograd.grad(want, [x, *source.parameters()], grad_out)):
        assert torch.equal(a, b)


def test_half_precision_gradients_stay_finite_for_inputs_beyond_a_fitted_grid():
    """The eager path (float16 on the CPU) ran the basis recursion at inputs beyond the grid, whose terms overflow in
    float16 and were then dropped: autograd's 0 * inf made x's gradient NaN, and every layer before it got NaN."""
    row = [-1.06640625, -1.048828125, -1.0302734375, -1.0126953125, -0.9794921875, -0.96435546875, -0.9560546875,
           -0.94775390625, -0.923828125, -0.90576171875, -0.88818359375, -0.8701171875]  # a grid update_grid left
    torch.manual_seed(0)
    dense = BSplineKAN(2, 1, grid_size=5)
    with torch.no_grad():
        dense.grid[0] = torch.tensor(row)
    for live in (0.0, 1.0):
        with torch.no_grad():
            dense.mask[0, 0] = live
        grads = []
        for layer in (dense, SparseBSplineKAN.from_dense(dense)):
            x = torch.tensor([[0.0, 0.3]], dtype=torch.float16, requires_grad=True)  # input 0 right of its grid
            layer.half()(x).sum().backward()
            layer.float()
            grads.append(x.grad.float())
        assert grads[1].isfinite().all()
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=3e-3)


def test_built_on_the_meta_device_it_takes_a_state_dict_by_assignment():
    """Counting the edges per input (bincount) failed on the meta device, and the edge checks under a
    torch.device("meta") context: the usual build-empty-then-load pattern did not work."""
    source = SparseBSplineKAN.from_dense(masked_layer(24, bias=True))
    empty = SparseBSplineKAN(7, 5, source.edges, bias=True, dtype=torch.float64, device="meta")
    assert empty.coef.is_meta and empty.edge_outputs.is_meta
    empty.load_state_dict(source.state_dict(), assign=True)
    x = torch.randn(9, 7, dtype=torch.float64)
    assert torch.equal(empty(x), source(x))
    with torch.device("meta"):
        assert SparseBSplineKAN(7, 5, source.edges.tolist()).coef.is_meta


def test_conversions_keep_train_or_eval_mode():
    model = pruned_kan(22).eval()
    sparse = model.to_sparse()
    assert not any(module.training for module in sparse.modules())
    assert not any(module.training for module in sparse.to_dense().modules())
    assert all(module.training for module in sparse.train().to_dense().modules())


def test_a_pruned_model_converts_after_auto_symbolic_fixed_its_dead_edges_to_zero():
    """auto_symbolic fixes every switched-off edge to "0"; to_sparse refused any symbolic edge, and its advice
    (unfix them) switched the pruned edges back on."""
    model = pruned_kan(23, widths=(3, 4, 2))
    x = torch.randn(40, 3, dtype=torch.float64)
    model.auto_symbolic(lib=["x"], r2_threshold=2.0, x=x, verbose=0)  # no fit reaches R^2 2: only the zeros
    assert any(layer.symbolic is not None for layer in model.layers)
    sparse = model.to_sparse()
    assert [layer.n_edges for layer in sparse.layers] == [int(layer.mask.sum()) for layer in model.layers]
    torch.testing.assert_close(sparse(x), model(x), rtol=1e-12, atol=1e-12)
    model.fix_symbolic(0, 0, 0, "x", fit_params=False)
    with pytest.raises(ValueError, match=r"edges fixed to symbolic functions, got 1: \(input, output\) \(0, 0\); "
                                         r".*KAN.remove_edge"):
        model.to_sparse()


def test_state_dict_errors_name_expected_and_got():
    """Refused as torch refuses a size mismatch (a RuntimeError from load_state_dict, strict or not), the message
    naming what the layer expected and what came."""
    sparse = SparseBSplineKAN.from_dense(masked_layer(8))
    dense_state = masked_layer(8).state_dict()
    with pytest.raises(RuntimeError,
                       match=r"the layer: this is a dense BSplineKAN state dict.*\(7, 5, 8\).*\(\d+, 8\)"):
        sparse.load_state_dict(dense_state)
    fewer = SparseBSplineKAN(7, 5, sparse.edges[1:], dtype=torch.float64)
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=rf"coef: expected \[E, G\+k\] = \({sparse.n_edges - 1}, 8\).*got "
                                               rf"\({sparse.n_edges}, 8\)"):
            fewer.load_state_dict(sparse.state_dict(), strict=strict)
    finer = SparseBSplineKAN(7, 5, sparse.edges, grid_size=7, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"coef: expected .*\(\d+, 10\).*got \(\d+, 8\)"):
        finer.load_state_dict(sparse.state_dict())
    moved = sparse.edges.clone()
    moved[0] = torch.tensor([o for o in [(i, j) for i in range(7) for j in range(5)]
                             if not any((moved == torch.tensor(o)).all(1))][0])
    other = SparseBSplineKAN(7, 5, moved, dtype=torch.float64)
    before = {name: tensor.clone() for name, tensor in other.state_dict().items()}
    with pytest.raises(RuntimeError, match="live edges differ"):
        other.load_state_dict(sparse.state_dict(), strict=False)
    assert all(torch.equal(before[name], tensor) for name, tensor in other.state_dict().items())  # nothing loaded
    model = torch.nn.Sequential(SparseBSplineKAN.from_dense(masked_layer(8)))
    with pytest.raises(RuntimeError, match=r"0: this is a dense BSplineKAN state dict"):
        model.load_state_dict({f"0.{name}": tensor for name, tensor in dense_state.items()})


def test_constructor_takes_grid_eps_as_the_dense_layer_does():
    sparse = SparseBSplineKAN(4, 3, [(0, 1), (3, 2)], grid_eps=0.5)
    assert sparse.grid_eps == 0.5 and sparse.to_dense().grid_eps == 0.5
    with pytest.raises(ValueError, match=r"grid_eps must be in \[0, 1\], got 2"):
        SparseBSplineKAN(4, 3, [(0, 1)], grid_eps=2)


def test_constructor_draws_the_dense_initialization_on_the_edges():
    edges = [(0, 1), (2, 0), (2, 3), (6, 4)]
    torch.manual_seed(9)
    sparse = SparseBSplineKAN(7, 5, edges, grid_size=4, spline_order=2, grid_range=(-2, 3), bias=True)
    torch.manual_seed(9)
    dense = BSplineKAN(7, 5, grid_size=4, spline_order=2, grid_range=(-2, 3), bias=True)
    rows, columns = torch.tensor(edges).t()
    assert torch.equal(sparse.coef, dense.coef[rows, columns]) and torch.equal(sparse.grid, dense.grid)
    assert torch.equal(sparse.scale_base, dense.scale_base[rows, columns])
    assert sparse.edges.tolist() == [list(e) for e in edges] and sparse.input_offsets.tolist() == [0, 1, 1, 3, 3, 3,
                                                                                                   3, 4]
    shuffled = SparseBSplineKAN(7, 5, torch.tensor(edges[::-1]))
    assert shuffled.edges.tolist() == sparse.edges.tolist()  # sorted by input, then output
    from_nonzero = SparseBSplineKAN(7, 5, [tuple(pair) for pair in torch.tensor(edges)])  # pairs of 0-d tensors
    assert from_nonzero.edges.tolist() == sparse.edges.tolist()
    settings = {"noise_scale": 0.3, "scale_base_mu": 0.2, "scale_base_sigma": 0.1, "scale_sp": 0.7}
    torch.manual_seed(10)
    sparse = SparseBSplineKAN(7, 5, edges, **settings)
    torch.manual_seed(10)
    dense = BSplineKAN(7, 5, **settings)
    for name in ("coef", "scale_base", "scale_sp"):
        assert torch.equal(getattr(sparse, name), getattr(dense, name)[rows, columns]), name


def test_a_sparse_state_dict_given_to_the_dense_model_says_how_to_load_it():
    sparse = pruned_kan(25).to_sparse()
    with pytest.raises(RuntimeError, match=r"layers.0: this is an edge-sparse SparseBSplineKAN state dict "
                                           r"\(edge_inputs, coef \(\d+, 8\) per live edge\).*to_dense\(\)"):
        KAN([5, 7, 3], dtype=torch.float64, bias=True).load_state_dict(sparse.state_dict())


def test_fit_refuses_the_sparsity_penalty_before_a_step():
    model = KAN([3, 4, 2], seed=0).to_sparse()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    x = torch.randn(16, 3)
    data = {"train_input": x, "train_label": x[:, :2], "test_input": x, "test_label": x[:, :2]}
    with pytest.raises(TypeError, match=r"lamb=0.01 needs layers with the sparsity penalty .*layers 0 "
                                        r"\(SparseBSplineKAN\), 1 \(SparseBSplineKAN\) have none"):
        fit(model, data, steps=2, lamb=0.01, progress=False)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_an_empty_layer_gives_the_bias():
    layer = SparseBSplineKAN(4, 3, [], bias=True)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -2.0, 0.5]))
    assert layer.n_edges == 0 and layer.density == 0.0
    x = torch.randn(5, 4, requires_grad=True)
    for backend in ("eager", "cpu"):
        layer.backend = backend
        out = layer(x)
        assert torch.equal(out, layer.bias.expand(5, 3))
        grad, = torch.autograd.grad(out.sum(), x)
        assert not bool(grad.any())


@pytest.mark.parametrize("edges, error, message", [
    ([(0, 1), (0, 1)], ValueError, r"duplicates \[\(0, 1\)\]"),
    ([(0, 5)], ValueError, r"outputs in 0..4, got \[\[0, 5\]\]"),
    ([(-1, 0)], ValueError, "inputs in 0..6"),
    ([(0, 1, 2)], ValueError, "pairs"),
    (torch.zeros(3, 2), TypeError, "integer tensor"),
    (torch.zeros(3, 3, dtype=torch.long), ValueError, r"shape \[E, 2\].*\(3, 3\)"),
    (5, TypeError, "sequence of \\(input, output\\) pairs"),
])
def test_bad_edges(edges, error, message):
    with pytest.raises(error, match=message):
        SparseBSplineKAN(7, 5, edges)


def test_bad_inputs_and_settings():
    layer = SparseBSplineKAN(7, 5, [(0, 0), (3, 2)])
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 7\), got \(4, 6\)"):
        layer(torch.randn(4, 6))
    with pytest.raises(TypeError, match="float64 does not match the layer's parameters \\(torch.float32\\)"):
        layer(torch.randn(4, 7, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(4, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="backend must be one of"):
        SparseBSplineKAN(7, 5, [(0, 0)], backend="sparse")
    with pytest.raises(ValueError, match="spline_order 1 to 5, got 7"):
        SparseBSplineKAN(7, 5, [(0, 0)], spline_order=7, backend="triton")


def test_from_dense_refuses_what_it_cannot_keep():
    layer = masked_layer(10, n_in=3, n_out=2, dead=0.0)
    with torch.no_grad():
        layer.mask[0, 1] = 0.25
    with pytest.raises(ValueError, match=r"0 \(dead\) and 1 \(live\).*\[0.25\]"):
        SparseBSplineKAN.from_dense(layer)
    symbolic = masked_layer(10, n_in=3, n_out=2, dead=0.0)
    symbolic.fix_symbolic(0, 1, "sin", fit_params=False)
    with pytest.raises(ValueError, match=r"symbolic functions, got 1: \(input, output\) \(0, 1\)"):
        SparseBSplineKAN.from_dense(symbolic)
    qat = QATBSplineKAN.from_float(masked_layer(10, n_in=3, n_out=2, dtype=torch.float32), QATConfig())
    with pytest.raises(TypeError, match="not quantized, not QAT.*QATBSplineKAN"):
        SparseBSplineKAN.from_dense(qat)
    with pytest.raises(TypeError, match="RBFKAN"):
        from kanlib import RBFKAN
        SparseBSplineKAN.from_dense(RBFKAN(3, 2))


def test_backend_follows_the_dense_layer():
    for dense_backend, sparse_backend in (("eager", "eager"), ("cpu", "cpu"), ("sparse", "cpu"), ("auto", "auto")):
        layer = masked_layer(11, n_in=3, n_out=2, backend=dense_backend)
        assert SparseBSplineKAN.from_dense(layer).backend == sparse_backend


@pytest.mark.parametrize("k,grid_size", [(2, 5), (3, 5), (3, 9)])
@pytest.mark.parametrize("backend,create_graph", [("eager", False), ("eager", True), ("cpu", True), ("cpu", False)])
def test_input_gradients_on_and_beside_every_knot_equal_the_dense_layers(k, grid_size, backend, create_graph):
    """On a uniform grid the span is found arithmetically, the knot's neighbour within rounding; the clamp that
    keeps the coordinate in [0, 1] there took the spline's slope away in the eager path (and in every backend's
    differentiable backward): at x = -0.2 of the default grid, -0.258 against the dense layer's -0.221."""
    dense = masked_layer(31, n_in=3, n_out=2, dead=0.0, spline_order=k, grid_size=grid_size)
    sparse = SparseBSplineKAN.from_dense(dense)
    sparse.backend = backend
    knots = dense.grid.t()
    x = torch.cat([knots, torch.nextafter(knots, knots + 1), torch.nextafter(knots, knots - 1)]).requires_grad_()
    want = torch.autograd.grad(dense(x).sum(), x)[0]
    got = torch.autograd.grad(sparse(x).sum(), x, create_graph=create_graph)[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
