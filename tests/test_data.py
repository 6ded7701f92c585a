import dataclasses
import gzip
import hashlib
import io
import math
import pickle
import struct
import tarfile

import numpy as np
import pytest
import sympy
import torch

from kanlib.data import (
    FORMULAS,
    ChecksumError,
    DatasetNotFoundError,
    Formula,
    download,
    get_formula,
    images,
    list_formulas,
    load_cifar10,
    load_digits,
    load_mnist,
    read_idx,
    symbolic_dataset,
)

KEYS = ["train_input", "train_label", "test_input", "test_label"]
FEYNMAN_NAMES = [name for name in list_formulas() if name.startswith("feynman_")]


# ---------------------------------------------------------------- symbolic_dataset


def test_registry_dataset_has_pykan_keys_shapes_and_dtype():
    data = symbolic_dataset("feynman_I_12_11", n_train=30, n_test=20)
    assert list(data) == KEYS
    assert data["train_input"].shape == (30, 5)
    assert data["train_label"].shape == (30, 1)
    assert data["test_input"].shape == (20, 5)
    assert data["test_label"].shape == (20, 1)
    assert all(tensor.dtype == torch.float32 for tensor in data.values())

    data64 = symbolic_dataset("product_xy", n_train=4, n_test=3, dtype=torch.float64)
    assert all(tensor.dtype == torch.float64 for tensor in data64.values())
    assert data64["train_input"].shape == (4, 2)


def test_labels_are_the_formula_of_the_returned_inputs():
    data = symbolic_dataset("feynman_I_44_4", n_train=50, n_test=40, seed=5)
    n, kb, T, V1, V2 = data["test_input"].unbind(1)
    torch.testing.assert_close(data["test_label"][:, 0], n * kb * T * torch.log(V2 / V1))


def test_callable_returning_1d_gives_one_label_column():
    def total(x):
        return x.sum(dim=1)

    data = symbolic_dataset(total, n_var=3, n_train=16, n_test=8)
    assert data["train_label"].shape == (16, 1)
    assert data["test_label"].shape == (8, 1)
    torch.testing.assert_close(data["train_label"][:, 0], data["train_input"].sum(dim=1))


def test_callable_returning_2d_keeps_every_label_column():
    def sum_and_product(x):
        return torch.stack([x[:, 0] + x[:, 1], x[:, 0] * x[:, 1]], dim=1)

    data = symbolic_dataset(sum_and_product, n_var=2, n_train=16, n_test=8)
    assert data["train_label"].shape == (16, 2)
    x = data["test_input"]
    torch.testing.assert_close(data["test_label"][:, 0], x[:, 0] + x[:, 1])
    torch.testing.assert_close(data["test_label"][:, 1], x[:, 0] * x[:, 1])


def test_same_seed_same_data_different_seed_different_data():
    first = symbolic_dataset("exp_sin_sq", n_train=64, n_test=32, seed=7)
    again = symbolic_dataset("exp_sin_sq", n_train=64, n_test=32, seed=7)
    other = symbolic_dataset("exp_sin_sq", n_train=64, n_test=32, seed=8)
    for key in KEYS:
        assert torch.equal(first[key], again[key])
        assert not torch.equal(first[key], other[key])
    assert not torch.equal(first["train_input"][:32], first["test_input"])


def test_samples_cover_each_variables_own_range():
    box = [(-2.0, -1.0), (0.0, 0.5), (10.0, 20.0)]
    data = symbolic_dataset(lambda x: x[:, 0], ranges=box, n_train=2000, n_test=2000)
    for inputs in (data["train_input"], data["test_input"]):
        assert inputs.shape[1] == 3
        for column, (lo, hi) in enumerate(box):
            values = inputs[:, column]
            width = hi - lo
            assert lo <= values.min() < lo + 0.01 * width
            assert hi - 0.01 * width < values.max() <= hi
            assert abs(values.mean().item() - (lo + hi) / 2) < 0.05 * width


def test_one_pair_applies_to_every_variable_and_default_is_minus_one_to_one():
    shared = symbolic_dataset(lambda x: x[:, 0], n_var=4, ranges=(3, 4), n_train=500, n_test=1)
    assert shared["train_input"].min() >= 3 and shared["train_input"].max() <= 4
    assert (shared["train_input"].min(dim=0).values < 3.05).all()
    default = symbolic_dataset(lambda x: x[:, 0], n_var=2, n_train=500, n_test=1)
    assert default["train_input"].min() >= -1 and default["train_input"].max() <= 1
    assert (default["train_input"].min(dim=0).values < -0.95).all()


def test_registry_ranges_are_the_default_and_can_be_overridden():
    formula = FORMULAS["feynman_I_15_3x"]
    data = symbolic_dataset(formula.name, n_train=500, n_test=1)
    for column, (lo, hi) in enumerate(formula.ranges):
        assert lo <= data["train_input"][:, column].min()
        assert data["train_input"][:, column].max() <= hi
    wider = symbolic_dataset("exp_sin_sq", ranges=(-3, 3), n_train=500, n_test=1)
    assert wider["train_input"].abs().max() > 2.5


def test_noise_goes_to_train_labels_only_with_the_requested_std():
    clean = symbolic_dataset("exp_sin_sq", n_train=20000, n_test=50, seed=3)
    noisy = symbolic_dataset("exp_sin_sq", n_train=20000, n_test=50, seed=3, noise=0.1)
    assert torch.equal(clean["train_input"], noisy["train_input"])
    assert torch.equal(clean["test_input"], noisy["test_input"])
    assert torch.equal(clean["test_label"], noisy["test_label"])
    residual = noisy["train_label"] - clean["train_label"]
    assert 0.097 < residual.std().item() < 0.103
    assert abs(residual.mean().item()) < 0.005


def test_normalize_uses_train_mean_and_std_for_both_splits():
    raw = symbolic_dataset("feynman_I_6_20b", n_train=300, n_test=100, seed=2)
    normed = symbolic_dataset(
        "feynman_I_6_20b",
        n_train=300,
        n_test=100,
        seed=2,
        normalize_input=True,
        normalize_label=True,
    )
    for part in ("input", "label"):
        train, test = raw[f"train_{part}"], raw[f"test_{part}"]
        mean, std = train.mean(dim=0), train.std(dim=0)
        torch.testing.assert_close(normed[f"test_{part}"], (test - mean) / std)
        normed_train = normed[f"train_{part}"]
        zeros = torch.zeros_like(mean)
        torch.testing.assert_close(normed_train.mean(dim=0), zeros, atol=1e-5, rtol=0)
        torch.testing.assert_close(normed_train.std(dim=0), torch.ones_like(std))


def test_normalizing_a_constant_label_column_is_an_error():
    with pytest.raises(ValueError, match=r"cannot normalize labels.*column\(s\) \[0\]"):
        symbolic_dataset(lambda x: torch.ones(len(x)), n_var=1, normalize_label=True)


# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("name", list_formulas())
def test_every_registry_entry_is_finite_and_varies_on_its_range(name):
    formula = FORMULAS[name]
    data = symbolic_dataset(name, n_train=500, n_test=1, seed=11)
    assert data["train_input"].shape == (500, formula.n_var)
    assert torch.isfinite(data["train_label"]).all()
    assert data["train_label"].std() > 0
    low = torch.tensor([lo for lo, _ in formula.ranges])
    high = torch.tensor([hi for _, hi in formula.ranges])
    assert ((low <= data["train_input"]) & (data["train_input"] <= high)).all()


def test_registry_holds_the_kan_paper_toys_and_at_least_20_feynman_equations():
    for toy in (
        "bessel_j0_20x",
        "exp_sin_sq",
        "product_xy",
        "exp_mean_sin_sq_100d",
        "exp_sin_sum_sq_4d",
    ):
        assert all(range_ == (-1.0, 1.0) for range_ in FORMULAS[toy].ranges)
    assert FORMULAS["exp_mean_sin_sq_100d"].n_var == 100
    assert len(FEYNMAN_NAMES) >= 20
    assert len({FORMULAS[name].n_var for name in FEYNMAN_NAMES}) >= 5
    for name in FEYNMAN_NAMES:
        formula = FORMULAS[name]
        assert len(formula.ranges) == len(formula.variables) == formula.n_var
        assert all(0 <= lo < hi for lo, hi in formula.ranges), name
        assert "AI Feynman" in formula.source


SYMPY_CHECKED = [name for name in list_formulas() if name != "exp_mean_sin_sq_100d"]


@pytest.mark.parametrize("name", SYMPY_CHECKED)
def test_expression_text_agrees_with_the_torch_implementation(name):
    formula = FORMULAS[name]
    symbols = [sympy.Symbol(variable) for variable in formula.variables]
    names = dict(zip(formula.variables, symbols))
    expression = sympy.parse_expr(formula.expression, local_dict=names)
    reference = sympy.lambdify(symbols, expression, modules=["scipy", "numpy"])
    x = symbolic_dataset(name, n_train=200, n_test=1, seed=4, dtype=torch.float64)["train_input"]
    expected = np.broadcast_to(reference(*x.numpy().T), (200,))
    # torch.special.bessel_j0 is accurate to about 3e-7, even in float64.
    atol = 1e-6 if name == "bessel_j0_20x" else 1e-12
    np.testing.assert_allclose(formula(x).numpy(), expected, rtol=1e-9, atol=atol)


def test_exp_sin_sq_equals_the_kan_running_example_on_given_points():
    points = torch.tensor([[0.5, 1.0], [0.0, 0.0], [-0.5, 0.5], [1.0, -1.0]])
    expected = torch.tensor([math.exp(2.0), 1.0, math.exp(-0.75), math.e])
    torch.testing.assert_close(FORMULAS["exp_sin_sq"](points), expected)
    data = symbolic_dataset("exp_sin_sq", n_train=100, n_test=10)
    x, y = data["train_input"].unbind(1)
    torch.testing.assert_close(data["train_label"][:, 0], torch.exp(torch.sin(math.pi * x) + y**2))


def test_toys_and_feynman_entries_on_hand_computed_points():
    def value(name, point):
        return FORMULAS[name](torch.tensor([point], dtype=torch.float64)).item()

    assert value("bessel_j0_20x", [0.0]) == pytest.approx(1.0)
    assert value("bessel_j0_20x", [0.1]) == pytest.approx(0.22389077914123567)
    assert value("product_xy", [0.5, -0.25]) == pytest.approx(-0.125)
    assert value("exp_mean_sin_sq_100d", [1.0] * 100) == pytest.approx(math.e)
    assert value("exp_mean_sin_sq_100d", [0.0] * 100) == pytest.approx(1.0)
    assert value("exp_sin_sum_sq_4d", [math.sqrt(0.5), 0, 0, 0]) == pytest.approx(math.exp(0.5))
    assert value("feynman_I_6_20a", [0.0]) == pytest.approx(1 / math.sqrt(2 * math.pi))
    assert value("feynman_I_12_11", [2, 3, 4, 5, 1]) == pytest.approx(2 * (3 + 20 * math.sin(1)))
    assert value("feynman_I_10_7", [2, 1, 2]) == pytest.approx(2 / math.sqrt(0.75))
    # omega == omega_0 is the 0/0 limit of sin(u)^2/u^2, i.e. 1: p_d*Ef*t/(h/(2 pi)).
    assert value("feynman_III_9_52", [1, 2, 3, 2 * math.pi, 4, 4]) == pytest.approx(6.0)


HALF_DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("name", list_formulas())
def test_every_registry_entry_works_in_half_precision_on_the_cpu(name, dtype):
    formula = FORMULAS[name]
    box = torch.tensor(formula.ranges, dtype=torch.float64)
    unit = torch.rand(512, formula.n_var, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x = (box[:, 0] + (box[:, 1] - box[:, 0]) * unit).to(dtype)
    labels = formula(x)
    reference = formula(x.float())
    assert labels.dtype == dtype
    assert torch.isfinite(labels).all()
    # Rounding of the half-precision intermediates: a few eps of the largest label.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(labels.float(), reference, rtol=eps, atol=16 * eps * reference.abs().max().item())


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_bessel_in_half_precision_is_the_float32_value_rounded(dtype):
    data = symbolic_dataset("bessel_j0_20x", n_train=50, n_test=10, dtype=dtype)
    for split in ("train", "test"):
        x, labels = data[f"{split}_input"], data[f"{split}_label"]
        assert x.dtype == labels.dtype == dtype
        expected = torch.special.bessel_j0(20 * x.float()).to(dtype)
        assert torch.equal(labels, expected)


def test_aliases_resolve_but_are_not_listed():
    assert FORMULAS["feynman_I_6_2a"] is FORMULAS["feynman_I_6_20a"]
    assert get_formula("feynman_I_15_1") is FORMULAS["feynman_I_15_10"]
    assert "feynman_I_6_2a" in FORMULAS
    assert "feynman_I_6_2a" not in list_formulas()
    assert len(FORMULAS) == len(list_formulas()) == len(set(list_formulas()))
    by_alias = symbolic_dataset("feynman_I_6_2", n_train=5, n_test=5)
    by_name = symbolic_dataset("feynman_I_6_20", n_train=5, n_test=5)
    assert all(torch.equal(by_alias[key], by_name[key]) for key in KEYS)


def test_a_formula_object_works_like_its_name():
    formula = FORMULAS["product_xy"]
    assert isinstance(formula, Formula)
    by_object = symbolic_dataset(formula, n_train=5, n_test=5)
    by_name = symbolic_dataset("product_xy", n_train=5, n_test=5)
    assert all(torch.equal(by_object[key], by_name[key]) for key in KEYS)


def test_formula_rejects_ranges_not_matching_n_var():
    with pytest.raises(ValueError, match="expected 2 ranges, got 1"):
        Formula("bad", lambda x: x[:, 0], 2, ((0.0, 1.0),), "x", "test")


# ---------------------------------------------------------------- bad input


def _one_column(x):
    return x[:, 0]


BAD_CALLS = {
    "unknown name": (
        {"f_or_name": "feynman_I_12_1"},
        ValueError,
        r"unknown formula 'feynman_I_12_1'.*feynman_I_12_11",
    ),
    "unknown far name": (
        {"f_or_name": "qqqq"},
        ValueError,
        r"unknown formula 'qqqq'; see list_formulas\(\)",
    ),
    "not a function": ({"f_or_name": 3}, TypeError, "got int"),
    "n_var vs formula": (
        {"f_or_name": "exp_sin_sq", "n_var": 3},
        ValueError,
        r"has n_var=2, got n_var=3",
    ),
    "n_var vs ranges": (
        {"f_or_name": _one_column, "n_var": 3, "ranges": [(0, 1), (0, 1)]},
        ValueError,
        "lists 2 .* pairs but n_var is 3",
    ),
    "no n_var": ({"f_or_name": _one_column, "ranges": (0, 1)}, ValueError, "n_var is required"),
    "range triple": (
        {"f_or_name": _one_column, "n_var": 2, "ranges": [(0, 1, 2)]},
        ValueError,
        r"got shape \(1, 3\)",
    ),
    "empty range": (
        {"f_or_name": _one_column, "ranges": [(0, 1), (2, 2)]},
        ValueError,
        r"lo < hi; variable 1 got \(2.0, 2.0\)",
    ),
    "infinite range": (
        {"f_or_name": _one_column, "ranges": [(0, math.inf)]},
        ValueError,
        "finite lo < hi",
    ),
    "n_var 0": ({"f_or_name": _one_column, "n_var": 0}, ValueError, "n_var must be an int >= 1, got 0"),
    "n_train 0": (
        {"f_or_name": "exp_sin_sq", "n_train": 0},
        ValueError,
        "n_train must be an int >= 1, got 0",
    ),
    "n_test 0": (
        {"f_or_name": "exp_sin_sq", "n_test": 0},
        ValueError,
        "n_test must be an int >= 1, got 0",
    ),
    "float n_train": (
        {"f_or_name": "exp_sin_sq", "n_train": 2.5},
        TypeError,
        "n_train must be an int >= 1, got 2.5 \\(float\\)",
    ),
    "negative noise": (
        {"f_or_name": "exp_sin_sq", "noise": -0.1},
        ValueError,
        r"noise must be .* >= 0, got -0.1",
    ),
    "text noise": ({"f_or_name": "exp_sin_sq", "noise": "0.1"}, TypeError, "got str"),
    "negative seed": (
        {"f_or_name": "exp_sin_sq", "seed": -1},
        ValueError,
        "seed must be an int >= 0, got -1",
    ),
    "integer dtype": (
        {"f_or_name": "exp_sin_sq", "dtype": torch.int64},
        TypeError,
        "floating-point torch.dtype, got torch.int64",
    ),
    "returns ndarray": (
        {"f_or_name": lambda x: x.numpy(), "n_var": 1},
        TypeError,
        "must return a torch.Tensor, got ndarray",
    ),
    "returns too few": (
        {"f_or_name": lambda x: x[:3, 0], "n_var": 1},
        ValueError,
        r"\[1000\] or \[1000, n_out\], got shape \(3,\)",
    ),
}


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_symbolic_dataset_bad_input_names_expected_and_received(kwargs, error, message):
    with pytest.raises(error, match=message):
        symbolic_dataset(**kwargs)


def test_get_formula_rejects_a_non_string():
    with pytest.raises(TypeError, match="must be a str, got int"):
        get_formula(5)


# ---------------------------------------------------------------- load_digits


def test_load_digits_shapes_dtypes_and_range():
    data = load_digits(test_size=0.25, seed=0)
    assert list(data) == KEYS
    assert data["train_input"].shape[1] == data["test_input"].shape[1] == 64
    assert len(data["train_input"]) + len(data["test_input"]) == 1797
    assert len(data["test_input"]) == math.ceil(0.25 * 1797)
    assert data["train_input"].dtype == torch.float32
    assert data["train_label"].dtype == data["test_label"].dtype == torch.int64
    assert data["train_label"].shape == (len(data["train_input"]),)
    assert data["train_input"].min() == 0 and data["train_input"].max() == 1
    raw = load_digits(test_size=0.25, seed=0, normalize=False, dtype=torch.float64)
    assert raw["train_input"].max() == 16
    torch.testing.assert_close(raw["train_input"].float() / 16, data["train_input"])


def test_load_digits_split_is_stratified_and_seeded():
    data = load_digits(test_size=0.2, seed=1)
    train_counts = torch.bincount(data["train_label"], minlength=10)
    test_counts = torch.bincount(data["test_label"], minlength=10)
    assert len(test_counts) == 10
    totals = train_counts + test_counts
    assert ((test_counts - 0.2 * totals).abs() <= 1).all()
    again = load_digits(test_size=0.2, seed=1)
    other = load_digits(test_size=0.2, seed=2)
    assert all(torch.equal(data[key], again[key]) for key in KEYS)
    assert not torch.equal(data["test_label"], other["test_label"])


@pytest.mark.parametrize(
    ("test_size", "error"), [(0.0, ValueError), (1.5, ValueError), ("0.2", TypeError)]
)
def test_load_digits_rejects_bad_test_size(test_size, error):
    with pytest.raises(error, match="test_size must be"):
        load_digits(test_size=test_size)


# ---------------------------------------------------------------- IDX / load_mnist

IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype(">i2"): 0x0B,
    np.dtype(">f4"): 0x0D,
}
MNIST_NAMES = {
    "train_input": "train-images-idx3-ubyte",
    "train_label": "train-labels-idx1-ubyte",
    "test_input": "t10k-images-idx3-ubyte",
    "test_label": "t10k-labels-idx1-ubyte",
}


def write_idx(path, array, compress=False):
    array = np.asarray(array)
    big_endian = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, IDX_CODES[big_endian.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + big_endian.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def fake_mnist(folder, compress=False, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    parts = {
        "train_input": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_label": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_input": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_label": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in parts.items():
        write_idx(folder / (MNIST_NAMES[key] + (".gz" if compress else "")), array, compress)
    return parts


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_parses_idx_values_exactly(tmp_path, compress):
    parts = fake_mnist(tmp_path, compress=compress)
    data = load_mnist(tmp_path)
    assert list(data) == KEYS
    assert data["train_input"].shape == (5, 784)
    assert data["test_input"].shape == (3, 784)
    assert data["train_input"].dtype == torch.float32
    assert data["train_label"].dtype == torch.int64
    for split in ("train", "test"):
        pixels = torch.from_numpy(parts[f"{split}_input"].reshape(len(parts[f"{split}_input"]), -1))
        assert torch.equal((data[f"{split}_input"] * 255).round().to(torch.uint8), pixels)
        assert torch.equal(data[f"{split}_label"], torch.from_numpy(parts[f"{split}_label"]).long())
    assert 0 <= data["train_input"].min() and data["train_input"].max() <= 1

    raw = load_mnist(tmp_path, normalize=False, flatten=False, dtype=torch.float64)
    assert raw["train_input"].shape == (5, 1, 28, 28)
    assert torch.equal(raw["train_input"][:, 0], torch.from_numpy(parts["train_input"]).double())


def test_load_mnist_accepts_mixed_raw_and_gz_files(tmp_path):
    parts = fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", parts["test_label"], compress=True)
    data = load_mnist(tmp_path)
    assert torch.equal(data["test_label"], torch.from_numpy(parts["test_label"]).long())


def test_load_mnist_finds_the_torchvision_layout_for_fashion(tmp_path):
    parts = fake_mnist(tmp_path / "FashionMNIST" / "raw", compress=True, seed=3)
    data = load_mnist(tmp_path, variant="fashion")
    assert torch.equal(data["train_label"], torch.from_numpy(parts["train_label"]).long())
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path, variant="mnist")


def test_load_mnist_missing_files_names_folder_and_each_file(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for name in MNIST_NAMES.values():
        assert name in message

    fake_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    assert "t10k-images-idx3-ubyte (or t10k-images-idx3-ubyte.gz)" in str(info.value)
    assert "train-images" not in str(info.value)


def test_load_mnist_corrupt_magic_is_a_value_error(tmp_path):
    fake_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34\x08\x03" + path.read_bytes()[4:])
    with pytest.raises(ValueError, match=r"IDX magic number 0x0000TTDD.*got 0x12340803"):
        load_mnist(tmp_path)


def test_load_mnist_labels_where_images_belong_is_a_value_error(tmp_path):
    parts = fake_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", parts["train_label"])
    with pytest.raises(ValueError, match="expected IDX magic number 0x00000803.*got 0x00000801"):
        load_mnist(tmp_path)


def test_load_mnist_truncated_data_is_a_value_error(tmp_path):
    fake_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"expected 2352 data bytes for shape \(3, 28, 28\).*2342"):
        load_mnist(tmp_path)


def test_load_mnist_count_mismatch_and_bad_class_are_value_errors(tmp_path):
    parts = fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", parts["train_label"][:4])
    with pytest.raises(ValueError, match="got 5 images .* and 4 labels"):
        load_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 12], dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected class indices 0..9, got 12"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_file_with_no_images_is_a_value_error_naming_it(tmp_path, split):
    fake_mnist(tmp_path, **{f"n_{split}": 0})
    image_file = tmp_path / MNIST_NAMES[f"{split}_input"]
    with pytest.raises(ValueError, match=r"holds no images \(shape \(0, 28, 28\)\)") as info:
        load_mnist(tmp_path)
    assert str(image_file) in str(info.value)


def test_load_mnist_corrupt_gzip_is_a_value_error(tmp_path):
    fake_mnist(tmp_path, compress=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(ValueError, match="expected a gzip-compressed IDX file"):
        load_mnist(tmp_path)


def test_load_mnist_rejects_an_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match=r"one of \['fashion', 'mnist'\], got 'kmnist'"):
        load_mnist(tmp_path, variant="kmnist")


@pytest.mark.parametrize(
    "array",
    [
        np.array([[1, -2, 300], [-32768, 0, 32767]], dtype=np.int16),
        np.array([[[0.5], [-1.25]]], dtype=np.float32),
        np.array([-128, 0, 127], dtype=np.int8),
    ],
)
def test_read_idx_round_trips_other_element_types(tmp_path, array):
    path = tmp_path / "array.idx"
    write_idx(path, array)
    parsed = read_idx(path)
    assert parsed.shape == array.shape
    assert parsed.dtype.isnative
    np.testing.assert_array_equal(parsed, array)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", [(0, 28, 28), (3, 0), (0,)])
def test_read_idx_of_a_zero_length_dimension_is_an_empty_array(tmp_path, shape, compress):
    path = tmp_path / "empty.idx"
    write_idx(path, np.zeros(shape, dtype=np.int16), compress)
    parsed = read_idx(path)
    assert parsed.shape == shape
    assert parsed.dtype == np.int16 and parsed.dtype.isnative


# ---------------------------------------------------------------- downloads (no network: urlopen stubbed)


class FakeServer:
    """Stands in for urllib.request.urlopen: serves the bytes registered for each URL, else no network."""

    def __init__(self, files):
        self.files, self.requests = files, []

    def __call__(self, url, timeout=None):
        self.requests.append(url)
        if url not in self.files:
            raise download.urllib.error.URLError("no network")
        return io.BytesIO(self.files[url])


def served_mnist(tmp_path, monkeypatch, resources_name="MNIST_RESOURCES", corrupt=None):
    """Gzipped fake MNIST files served at the first mirror of each resource, the resources' MD5s replaced by
    theirs (the real checksums belong to the real files)."""
    source = tmp_path / "source"
    parts = fake_mnist(source, compress=True)
    resources, files = [], {}
    for resource in getattr(download, resources_name):
        data = (source / resource.filename).read_bytes()
        files[resource.urls[0]] = data + b"x" if resource.filename == corrupt else data
        resources.append(dataclasses.replace(resource, md5=hashlib.md5(data).hexdigest()))
    monkeypatch.setattr(download, resources_name, tuple(resources))
    monkeypatch.setattr(images, resources_name, tuple(resources))
    server = FakeServer(files)
    monkeypatch.setattr(download.urllib.request, "urlopen", server)
    return parts, server


@pytest.mark.parametrize("variant,resources_name,folder", [("mnist", "MNIST_RESOURCES", "MNIST"),
                                                           ("fashion", "FASHION_MNIST_RESOURCES", "FashionMNIST")])
def test_load_mnist_downloads_missing_files_into_the_torchvision_layout(tmp_path, monkeypatch, variant,
                                                                        resources_name, folder):
    parts, server = served_mnist(tmp_path, monkeypatch, resources_name)
    root = tmp_path / "root"
    data = load_mnist(root, variant=variant, download=True)
    assert sorted(p.name for p in (root / folder / "raw").iterdir()) == sorted(
        name + ".gz" for name in MNIST_NAMES.values())
    assert torch.equal(data["train_label"], torch.from_numpy(parts["train_label"]).long())
    load_mnist(root, variant=variant, download=True)  # present now: nothing fetched again
    assert len(server.requests) == 4


def test_a_download_whose_checksum_differs_is_refused_and_removed(tmp_path, monkeypatch):
    served_mnist(tmp_path, monkeypatch, corrupt="t10k-images-idx3-ubyte.gz")
    root = tmp_path / "root"
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte.gz.*expected MD5 [0-9a-f]{32} .* got"):
        load_mnist(root, download=True)
    assert not any(p.name.startswith("t10k-images") for p in (root / "MNIST" / "raw").iterdir())


def test_offline_download_names_every_file_to_place(tmp_path, monkeypatch):
    monkeypatch.setattr(download.urllib.request, "urlopen", FakeServer({}))
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path, download=True)
    message = str(info.value)
    assert "downloading failed" in message and "no network" in message and str(tmp_path / "MNIST" / "raw") in message
    assert all(f"{name}.gz (MD5 " in message for name in MNIST_NAMES.values())


def write_cifar(folder, n=4, seed=0):
    """CIFAR-10's python batches: pickled dicts of uint8 data [n, 3072] and labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
        written[name] = batch
    return written


def test_load_cifar10_reads_the_python_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path)
    assert data["train_input"].shape == (20, 3, 32, 32) and data["test_input"].shape == (4, 3, 32, 32)
    first = torch.from_numpy(batches["data_batch_1"][b"data"][0].reshape(3, 32, 32)).float() / 255
    torch.testing.assert_close(data["train_input"][0], first)
    assert data["test_label"].tolist() == [int(v) for v in batches["test_batch"][b"labels"]]
    assert load_cifar10(tmp_path, flatten=True)["train_input"].shape == (20, 3072)


def test_load_cifar10_extracts_a_checked_archive(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_cifar(source / "cifar-10-batches-py")
    archive = tmp_path / "root" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    checksum = hashlib.md5(archive.read_bytes()).hexdigest()
    resources = (dataclasses.replace(download.CIFAR10_RESOURCES[0], md5=checksum),)
    monkeypatch.setattr(images, "CIFAR10_RESOURCES", resources)
    assert load_cifar10(archive.parent)["train_label"].shape == (20,)


def test_load_cifar10_without_files_names_the_archive_to_place(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar10: files missing from .*download=True.*"
                                                   r"cifar-10-python.tar.gz \(MD5 c58f30108f718f92721af3b95e74349a\)"):
        load_cifar10(tmp_path)
