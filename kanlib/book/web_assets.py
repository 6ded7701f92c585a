"""The JavaScript the website and the slides load, installed from the npm registry so both work offline.

``make assets`` (or ``install_assets()``) runs ``npm install`` into _build/npm/; the book copies MathJax 3
and ONNX Runtime Web (the live demo page) from there, the slides reveal.js, jQuery, RequireJS and MathJax 2
(which nbconvert's reveal template uses).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

from .paths import NPM_PREFIX

# package folder under node_modules -> the npm spec that installs it
PACKAGES = {
    "reveal.js": "reveal.js@5",
    "jquery": "jquery@3",
    "requirejs": "requirejs@2",
    "mathjax2": "mathjax2@npm:mathjax@2",
    "mathjax": "mathjax@3",
    "onnxruntime-web": "onnxruntime-web@1.30",
}


class MissingAssetsError(FileNotFoundError):
    """The npm packages the site needs are not installed."""


def node_modules(prefix: str | os.PathLike[str] = NPM_PREFIX) -> pathlib.Path:
    return pathlib.Path(prefix) / "node_modules"


def asset_dir(package: str, prefix: str | os.PathLike[str] = NPM_PREFIX) -> pathlib.Path:
    """The installed folder of one of PACKAGES; MissingAssetsError naming the install command when absent."""
    if package not in PACKAGES:
        raise ValueError(f"package: expected one of {sorted(PACKAGES)}, got {package!r}")
    folder = node_modules(prefix) / package
    if not (folder / "package.json").is_file():
        raise MissingAssetsError(
            f"expected the npm package {PACKAGES[package]!r} in {folder}, found nothing; "
            f"run `make assets` (npm install --prefix {prefix} ...)")
    return folder


def install_assets(prefix: str | os.PathLike[str] = NPM_PREFIX) -> pathlib.Path:
    """npm install PACKAGES into `prefix` (needs npm and the registry); returns node_modules."""
    npm = shutil.which("npm")
    if npm is None:
        raise MissingAssetsError("expected the `npm` command (Debian: apt-get install npm), found none on PATH")
    pathlib.Path(prefix).mkdir(parents=True, exist_ok=True)
    subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--silent",
                    *PACKAGES.values()], check=True)
    return node_modules(prefix)


def copy_tree(source: pathlib.Path, target: pathlib.Path, *, ignore: tuple[str, ...] = ()) -> None:
    """Copy `source` to `target`, replacing what is there."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
