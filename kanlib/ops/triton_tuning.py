"""Which tile configurations the Triton kernels' autotuners try on a GPU, the autotuner every kernel module
builds from its lists (:func:`autotune`), and the launch option every kernel is launched with (``FP_FUSION``).

Every listed configuration by default. ``KANLIB_TRITON_AUTOTUNE=first`` keeps the first of each list alone: the
GPU reference run sets it for its tests and for ``bench images``, since compiling and timing every configuration
for every small shape they meet costs far more than the work itself; the other benchmarks tune over the whole
lists.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["AUTOTUNE_ENV", "AUTOTUNE_MODES", "FP_FUSION", "tuned", "interpreting", "tile_config", "autotune",
           "ceil_div", "power_of_two_at_least"]

AUTOTUNE_ENV = "KANLIB_TRITON_AUTOTUNE"
AUTOTUNE_MODES = ("all", "first")
# The launch option every kernel is launched with: a multiply followed by an add compiles to one fused multiply-add,
# as the kernels were written, tested and timed. Left unset, Triton 3.9 warns that its default turns fusion off in
# 3.10, which would change the kernels' speed and rounding (TRITON_FORCE_DISABLE_FP_FUSION=1 still turns it off).
FP_FUSION = {"enable_fp_fusion": True}
T = TypeVar("T")


def tuned(configs: Sequence[T]) -> list[T]:
    """``configs``, or its first alone when ``KANLIB_TRITON_AUTOTUNE=first``; ValueError for another value."""
    mode = os.environ.get(AUTOTUNE_ENV, "all")
    if mode not in AUTOTUNE_MODES:
        raise ValueError(f"{AUTOTUNE_ENV}: expected one of {AUTOTUNE_MODES}, got {mode!r}")
    return list(configs[:1] if mode == "first" else configs)


def ceil_div(n: int, size: int) -> int:
    """The number of blocks of ``size`` that cover ``n``: the launch grids' arithmetic on the host, where
    ``triton.cdiv`` (a constexpr function in recent Triton) costs microseconds per call on every launch."""
    return -(-n // size)


def power_of_two_at_least(n: int) -> int:
    """The smallest power of two at least n (1 for n <= 1), as ``triton.next_power_of_2`` gives it for n >= 1, on the
    host without its constexpr wrapper's microseconds per call."""
    return 1 << max(n - 1, 0).bit_length()


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` when triton was imported)."""
    import triton

    if hasattr(triton, "knobs"):
        return bool(triton.knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tile_config(blocks: dict[str, int], num_warps: int, num_stages: int, zeroed_when_split: str | None = None):
    """A ``triton.Config`` of these block sizes. ``zeroed_when_split`` names an output the kernel adds into
    atomically when its inputs are split (``blocks["SPLIT_I"] > 1``): such a configuration zeroes it before each
    launch, and one that does not split leaves it to the kernel, which stores every element (no fill to launch)."""
    import triton

    def zero_output(arguments):
        arguments[zeroed_when_split].zero_()

    splits = zeroed_when_split is not None and blocks.get("SPLIT_I", 1) > 1
    return triton.Config(dict(blocks), num_warps=num_warps, num_stages=num_stages,
                         pre_hook=zero_output if splits else None)


def autotune(names: Sequence[str], tiles: Sequence[tuple[int, ...]], key: Sequence[str],
             interpreter_tile: tuple[int, ...], full_precision: Sequence[tuple[int, ...]] = (),
             wide: Callable[[dict, dict], bool] | None = None, keep: Callable[[dict, dict], bool] | None = None,
             zeroed_when_split: str | None = None, **options):
    """``triton.autotune`` over ``tiles``, each (the block sizes ``names`` name..., num_warps, num_stages), as
    :func:`tuned` keeps them; under the interpreter over ``interpreter_tile`` alone, keyed on nothing.
    ``zeroed_when_split``: see :func:`tile_config`.

    With ``full_precision``, a second list for the calls where ``wide(named_args, kwargs)`` holds (float32 products
    in IEEE precision, say), tried instead of ``tiles`` (tensor-core tiles). With ``keep``, a call tries only the
    configurations whose block sizes ``keep(block_sizes, kwargs)`` accepts (the first of each list must pass for
    every call; the key must hold what ``keep`` reads). ``options`` go to ``triton.autotune``.
    """
    import triton

    if full_precision and wide is None:
        raise ValueError("autotune: full_precision tiles need wide(named_args, kwargs) to say which calls take them")

    def configs(chosen):
        return [tile_config(dict(zip(names, tile[:-2], strict=True)), tile[-2], tile[-1], zeroed_when_split)
                for tile in chosen]

    if interpreting():
        return triton.autotune(configs=configs([interpreter_tile]), key=[], **options)
    narrow = configs(tuned(tiles))
    if not full_precision and keep is None:
        return triton.autotune(configs=narrow, key=list(key), **options)
    full = configs(tuned(full_precision))

    def pick(_configs, named_args, **kwargs):
        chosen = full if full and wide(named_args, kwargs) else narrow
        return chosen if keep is None else [config for config in chosen if keep(config.kwargs, kwargs)]

    return triton.autotune(configs=narrow + full, key=list(key), prune_configs_by={"early_config_prune": pick},
                           **options)
