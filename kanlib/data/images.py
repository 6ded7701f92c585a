"""Image classification data: scikit-learn's bundled 8x8 digits (offline) and (Fashion-)MNIST from IDX files.

Every loader returns the dict of pykan's ``kan.utils.create_dataset``: ``train_input``, ``train_label``,
``test_input``, ``test_label``. Nothing here downloads anything.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..checks import check_int, is_real
from .download import CIFAR10_RESOURCES, FASHION_MNIST_RESOURCES, MNIST_RESOURCES, DatasetNotFoundError, fetch
from .symbolic import check_float_dtype

__all__ = ["load_digits", "load_mnist", "load_fashion_mnist", "load_cifar10", "read_idx"]

Dataset = dict[str, torch.Tensor]


def load_digits(
    test_size: float = 0.2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), split stratified by class.

    ``test_size`` is the test fraction in (0, 1); ``seed`` fixes the split. Returns
    train_input / test_input [n, 64]: pixel intensities 0..16, divided by 16 into [0, 1] when
    ``normalize`` (no standardization); train_label / test_label [n] int64 class indices 0..9.
    """
    # scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    if not is_real(test_size):
        raise TypeError(f"test_size must be a float in (0, 1), got {type(test_size).__name__}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size}")
    check_int("seed", seed, 0)
    check_float_dtype(dtype)

    images, labels = sklearn_load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=float(test_size), random_state=int(seed), stratify=labels
    )
    scale = 16.0 if normalize else 1.0

    def inputs(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(x / scale, dtype=dtype, device=device)

    def classes(y: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(y, dtype=torch.int64, device=device)

    return {
        "train_input": inputs(train_x),
        "train_label": classes(train_y),
        "test_input": inputs(test_x),
        "test_label": classes(test_y),
    }


_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx_file(path: Path) -> tuple[int, np.ndarray]:
    """(magic number, native-endian array) of an IDX file, gzipped or not."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # the gzip signature, whatever the file's suffix
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(
                f"{path}: expected a gzip-compressed IDX file, got a corrupt stream ({error})"
            ) from error
    if len(data) < 4:
        raise ValueError(f"{path}: expected a 4-byte IDX magic number, got a {len(data)}-byte file")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        codes = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(
            f"{path}: expected an IDX magic number 0x0000TTDD (TT a type code in {codes}, "
            f"DD >= 1 dimensions), got 0x{magic:08X}"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{path}: expected a {header_size}-byte header for {ndim} dimensions, "
            f"got a {len(data)}-byte file"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected_bytes = math.prod(shape) * dtype.itemsize
    if len(data) - header_size != expected_bytes:
        raise ValueError(
            f"{path}: expected {expected_bytes} data bytes for shape {shape} of {dtype.name}, "
            f"got {len(data) - header_size}"
        )
    native = dtype.newbyteorder("=")
    if expected_bytes == 0:  # a zero-length dimension: nothing for frombuffer to read
        return magic, np.empty(shape, dtype=native)
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return magic, array.astype(native)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an IDX file (raw or gzipped), shaped by its header, in native byte order."""
    return _read_idx_file(Path(path))[1]


_MNIST_FILES = {
    "train_input": "train-images-idx3-ubyte",
    "train_label": "train-labels-idx1-ubyte",
    "test_input": "t10k-images-idx3-ubyte",
    "test_label": "t10k-labels-idx1-ubyte",
}
_TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion": "FashionMNIST"}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_N_CLASSES = 10


def _find_idx(directory: Path, base_name: str) -> Path | None:
    for candidate in (directory / base_name, directory / f"{base_name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate_mnist(folder: Path, variant: str) -> dict[str, Path]:
    """Paths of the four IDX files in ``folder`` or in its torchvision layout ``<Name>/raw``."""
    torchvision_folder = folder / _TORCHVISION_FOLDERS[variant] / "raw"
    for directory in (folder, torchvision_folder):
        paths = {key: _find_idx(directory, name) for key, name in _MNIST_FILES.items()}
        if all(paths.values()):
            return paths
    missing = [name for name in _MNIST_FILES.values() if _find_idx(folder, name) is None]
    raise FileNotFoundError(
        f"{variant} IDX files missing from {folder} (also looked in {torchvision_folder}); "
        f"expected {', '.join(f'{name} (or {name}.gz)' for name in missing)}"
    )


def _read_mnist_part(path: Path, expected_magic: int) -> np.ndarray:
    magic, array = _read_idx_file(path)
    if magic != expected_magic:
        raise ValueError(
            f"{path}: expected IDX magic number 0x{expected_magic:08X} "
            f"(unsigned bytes, {expected_magic & 0xFF} dimensions), got 0x{magic:08X}"
        )
    return array


def load_mnist(
    folder: str | os.PathLike,
    variant: str = "mnist",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
    flatten: bool = True,
    download: bool = False,
) -> Dataset:
    """MNIST or Fashion-MNIST (``variant`` "mnist" / "fashion") from the IDX files in ``folder``.

    ``folder`` holds the four standard files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), each raw or gzipped with a ``.gz`` suffix,
    either directly or in torchvision's ``MNIST/raw`` or ``FashionMNIST/raw`` below it. With ``download``,
    missing files are fetched into that torchvision folder (their published MD5s checked); offline, the error
    names the files to place there.
    Returns train_input / test_input [n, rows*cols] ([n, 784] for MNIST) when ``flatten``, else
    [n, 1, rows, cols], as 0..255 divided by 255 into [0, 1] when ``normalize``;
    train_label / test_label [n] int64 class indices 0..9.
    Raises FileNotFoundError naming the folder and every missing file, ValueError for a bad file
    or one that holds no images.
    """
    if variant not in _TORCHVISION_FOLDERS:
        raise ValueError(f"variant must be one of {sorted(_TORCHVISION_FOLDERS)}, got {variant!r}")
    check_float_dtype(dtype)
    if download:
        try:
            _locate_mnist(Path(folder), variant)
        except FileNotFoundError:
            resources = MNIST_RESOURCES if variant == "mnist" else FASHION_MNIST_RESOURCES
            fetch(resources, Path(folder) / _TORCHVISION_FOLDERS[variant] / "raw", download=True, name=variant)
    paths = _locate_mnist(Path(folder), variant)

    dataset: Dataset = {}
    for split in ("train", "test"):
        image_path, label_path = paths[f"{split}_input"], paths[f"{split}_label"]
        images = _read_mnist_part(image_path, _IMAGES_MAGIC)
        labels = _read_mnist_part(label_path, _LABELS_MAGIC)
        if len(images) == 0:
            raise ValueError(
                f"{image_path}: expected at least one image, got an IDX file that holds no images "
                f"(shape {images.shape})"
            )
        if len(images) != len(labels):
            raise ValueError(
                f"expected as many labels as images, got {len(images)} images in {image_path} "
                f"and {len(labels)} labels in {label_path}"
            )
        if labels.size and labels.max() >= _N_CLASSES:
            raise ValueError(
                f"{label_path}: expected class indices 0..{_N_CLASSES - 1}, got {int(labels.max())}"
            )
        inputs = torch.from_numpy(images).to(dtype=dtype)
        if normalize:
            inputs = inputs / 255
        inputs = inputs.reshape(len(images), -1) if flatten else inputs.unsqueeze(1)
        dataset[f"{split}_input"] = inputs.to(device)
        dataset[f"{split}_label"] = torch.from_numpy(labels.astype(np.int64)).to(device)
    return dataset


def load_fashion_mnist(folder: str | os.PathLike, **kwargs) -> Dataset:
    """Fashion-MNIST: ``load_mnist(folder, variant="fashion", **kwargs)``."""
    return load_mnist(folder, variant="fashion", **kwargs)


_CIFAR10_FOLDER = "cifar-10-batches-py"
_CIFAR10_SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pickle

    with path.open("rb") as file:
        batch = pickle.load(file, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = f" with keys {sorted(batch)}" if isinstance(batch, dict) else ""
        raise ValueError(f"{path}: expected a CIFAR-10 batch (a pickled dict with data and labels), got "
                         f"{type(batch).__name__}{keys}")
    data, labels = np.asarray(batch[b"data"], dtype=np.uint8), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: expected data [n, 3072] and n labels, got {data.shape} and {labels.shape}")
    return data, labels


def load_cifar10(
    folder: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
    flatten: bool = False,
    download: bool = False,
) -> Dataset:
    """CIFAR-10 from ``folder``: its ``cifar-10-batches-py`` (the python version's batches), else its
    ``cifar-10-python.tar.gz`` (MD5 checked), which ``download`` fetches when missing.

    Returns train_input [50000, 3, 32, 32] and test_input [10000, 3, 32, 32] (or [n, 3072] when ``flatten``),
    0..255 divided by 255 when ``normalize``; train_label / test_label [n] int64 classes 0..9.
    """
    check_float_dtype(dtype)
    folder = Path(folder)
    batches = folder / _CIFAR10_FOLDER
    if not batches.is_dir():
        import tarfile

        archive = fetch(CIFAR10_RESOURCES, folder, download=download, name="cifar10")[0]
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(_CIFAR10_FOLDER + "/") and m.isfile()]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
            tar.extractall(folder, members=members, **safe)
    dataset: Dataset = {}
    for split, names in _CIFAR10_SPLITS.items():
        missing = [name for name in names if not (batches / name).is_file()]
        if missing:
            raise DatasetNotFoundError(f"cifar10: expected the batches {names} in {batches}, missing {missing}")
        parts = [_read_cifar_batch(batches / name) for name in names]
        images = np.concatenate([data for data, _ in parts])
        labels = np.concatenate([labels for _, labels in parts])
        if labels.size and (labels.min() < 0 or labels.max() >= _N_CLASSES):
            raise ValueError(f"{batches}: expected class indices 0..{_N_CLASSES - 1}, "
                             f"got {labels.min()}..{labels.max()}")
        inputs = torch.from_numpy(images).to(dtype=dtype)
        if normalize:
            inputs = inputs / 255
        inputs = inputs if flatten else inputs.reshape(len(images), 3, 32, 32)
        dataset[f"{split}_input"] = inputs.to(device)
        dataset[f"{split}_label"] = torch.from_numpy(labels).to(device)
    return dataset
