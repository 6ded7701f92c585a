"""The standard image datasets' files, fetched when asked and a network is there, always checked by checksum.

Each dataset is a list of :class:`Resource`: a file name, its MD5 (the published checksums, as torchvision
uses them) and the addresses it is served from. :func:`fetch` returns the local paths, downloading only what is
missing when ``download`` is true; offline, or without ``download``, a missing file is a
:class:`DatasetNotFoundError` that names every file to place in the folder and where to get it.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Resource", "DatasetNotFoundError", "ChecksumError", "MNIST_RESOURCES", "FASHION_MNIST_RESOURCES",
           "CIFAR10_RESOURCES", "md5_of", "fetch"]


@dataclass(frozen=True)
class Resource:
    """One file of a dataset: its name, MD5 and the addresses (mirrors, in order) that serve it."""

    filename: str
    md5: str
    urls: tuple[str, ...]


def _mnist_like(bases: Sequence[str], checksums: dict[str, str]) -> tuple[Resource, ...]:
    return tuple(Resource(name, md5, tuple(base + name for base in bases)) for name, md5 in checksums.items())


MNIST_RESOURCES = _mnist_like(
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
     "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
     "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
     "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"})
FASHION_MNIST_RESOURCES = _mnist_like(
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
     "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
     "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"})
CIFAR10_RESOURCES = (Resource("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                              ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)),)
_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """Files of a dataset are missing and were not (or could not be) downloaded."""


class ChecksumError(ValueError):
    """A dataset file's MD5 is not the published one."""


def md5_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path: Path, resource: Resource) -> Path:
    got = md5_of(path)
    if got != resource.md5:
        raise ChecksumError(f"{path}: expected MD5 {resource.md5} (the published {resource.filename}), got {got}; "
                            f"delete the file to download it again")
    return path


def _download(resource: Resource, path: Path, timeout_s: float) -> None:
    """The first address that answers, written beside ``path`` and moved there once its checksum matches."""
    partial = path.with_name(path.name + ".part")
    errors = []
    for url in resource.urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as file:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    file.write(chunk)
        except (urllib.error.URLError, OSError) as error:
            errors.append(f"{url}: {error}")
            partial.unlink(missing_ok=True)
            continue
        try:
            _check(partial, resource)
        except ChecksumError:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(path)
        return
    raise urllib.error.URLError("; ".join(errors))


def fetch(resources: Sequence[Resource], folder: str | os.PathLike[str], *, download: bool,
          name: str = "the dataset", timeout_s: float = 60.0) -> list[Path]:
    """The local paths of ``resources`` in ``folder``, each checked against its MD5; with ``download``, missing
    ones are downloaded first. DatasetNotFoundError names every file still missing, where to place it and where
    it is served; ChecksumError names a file whose MD5 differs."""
    folder = Path(folder)
    missing = [resource for resource in resources if not (folder / resource.filename).is_file()]
    unreachable = ""
    if missing and download:
        folder.mkdir(parents=True, exist_ok=True)
        for resource in list(missing):
            try:
                _download(resource, folder / resource.filename, timeout_s)
                missing.remove(resource)
            except urllib.error.URLError as error:
                unreachable = f" (downloading failed: {error.reason})"
    if missing:
        files = "; ".join(f"{r.filename} (MD5 {r.md5}) from {r.urls[0]}" for r in missing)
        how = "" if download else ", or pass download=True where a network is available"
        raise DatasetNotFoundError(f"{name}: files missing from {folder}{unreachable}; place them there{how}: "
                                   f"{files}")
    return [_check(folder / resource.filename, resource) for resource in resources]
