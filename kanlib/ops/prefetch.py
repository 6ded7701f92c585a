"""Software prefetching for numba kernels, through LLVM's ``llvm.prefetch``.

A kernel that reads one block of memory, then computes on it from cache, leaves the memory bus idle while it
computes and its cores idle while it reads. Asking for the next block's cache lines a few at a time during the
computation overlaps the two. Called from ``@njit`` code only:

- ``prefetch(array, index)``: a hint to bring the cache line holding ``array.flat[index]`` into the cache, the index
  counted in elements from the first element (as a view has it). It never faults, even outside the array.
- ``prefetch_lines(array, start, stop, first_line, n_lines)``: prefetches lines first_line .. first_line + n_lines
  of the flat range [start, stop), clipped to it: one call per step of a loop spreads a range over the loop.

PREFETCH_LINE is the cache line size the lines are counted in (64 bytes on x86-64 and most ARM cores).
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["PREFETCH_LINE", "line_range", "prefetch", "prefetch_lines"]

PREFETCH_LINE = 64
_READ, _KEEP_IN_ALL_LEVELS, _DATA_CACHE = 0, 3, 1


@intrinsic
def prefetch(typingctx, array, index):
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
        builder.call(function, [address, ir.Constant(i32, _READ), ir.Constant(i32, _KEEP_IN_ALL_LEVELS),
                                ir.Constant(i32, _DATA_CACHE)])
        return context.get_dummy_value()

    return signature, codegen


@njit(inline="always", cache=True)
def line_range(start, stop, first_line, n_lines, per_line):
    """(first index, end): the flat indices first, first + per_line, .. below end are the lines first_line ..
    first_line + n_lines of [start, stop) (per_line elements a line), clipped to it."""
    index = start + first_line * per_line
    return index, min(stop, index + n_lines * per_line)


@njit(inline="always", cache=True)
def prefetch_lines(array, start, stop, first_line, n_lines):
    per_line = max(1, PREFETCH_LINE // array.itemsize)
    index, end = line_range(start, stop, first_line, n_lines, per_line)
    while index < end:
        prefetch(array, index)
        index += per_line
