"""Software prefetching for numba kernels, through LLVM's ``llvm.prefetch``.

A kernel that reads one block of memory, then computes on it from cache, leaves the memory bus idle while it
computes and its cores idle while it reads. Asking for the next block's cache lines a few at a time during the
computation overlaps the two. Called from ``@njit`` code only:

- ``prefetch(array, index)``: a hint to bring the cache line holding ``array.flat[index]`` into the cache, the index
  counted in elements from the first element (as a view has it). It never faults, even outside the array.
- ``prefetch_for_write(array, index)``: the same for a line about to be written (x86-64's ``prefetchw``): a store
  into a line not in the cache first reads it from memory, and the hint starts that read early, in exclusive state.
- ``prefetch_lines(array, start, stop, first_line, n_lines, for_write=False)``: prefetches lines first_line ..
  first_line + n_lines of the flat range [start, stop), clipped to it (for writing with ``for_write``): one call per
  step of a loop spreads a range over the loop.

PREFETCH_LINE is the cache line size the lines are counted in (64 bytes on x86-64 and most ARM cores).
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["PREFETCH_LINE", "line_range", "prefetch", "prefetch_for_write", "prefetch_lines"]

PREFETCH_LINE = 64
_READ, _WRITE, _KEEP_IN_ALL_LEVELS, _DATA_CACHE = 0, 1, 3, 1


def _prefetch_intrinsic(access: int, name: str):
    """The intrinsic that calls llvm.prefetch for reading (access _READ) or writing (_WRITE)."""
    def typer(typingctx, array, index):
        if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
            return None
        signature = types.void(array, types.intp)

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            byte_pointer = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            function = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]), "llvm.prefetch.p0")
            address = builder.bitcast(builder.gep(data, [args[1]]), byte_pointer)
            builder.call(function, [address, ir.Constant(i32, access), ir.Constant(i32, _KEEP_IN_ALL_LEVELS),
                                    ir.Constant(i32, _DATA_CACHE)])
            return context.get_dummy_value()

        return signature, codegen

    typer.__name__ = name
    return intrinsic(typer)


prefetch = _prefetch_intrinsic(_READ, "prefetch")
prefetch_for_write = _prefetch_intrinsic(_WRITE, "prefetch_for_write")


@njit(inline="always", cache=True)
def line_range(start, stop, first_line, n_lines, per_line):
    """(first index, end): the flat indices first, first + per_line, .. below end are the lines first_line ..
    first_line + n_lines of [start, stop) (per_line elements a line), clipped to it."""
    index = start + first_line * per_line
    return index, min(stop, index + n_lines * per_line)


@njit(inline="always", cache=True)
def prefetch_lines(array, start, stop, first_line, n_lines, for_write=False):
    per_line = max(1, PREFETCH_LINE // array.itemsize)
    index, end = line_range(start, stop, first_line, n_lines, per_line)
    while index < end:
        if for_write:
            prefetch_for_write(array, index)
        else:
            prefetch(array, index)
        index += per_line
