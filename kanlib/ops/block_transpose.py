"""8 x 8 block transposition for numba kernels, through LLVM's vector shuffles.

Numba's compiler does not vectorize a transposition: each entry is read and written on its own. These intrinsics
load the eight rows of a block as vectors and transpose them in three rounds of eight two-vector shuffles (each
round interleaves row r with row r + 4; three rounds transpose an 8 x 8 block), which LLVM turns into the
permutations of whatever vector unit the CPU has. Called from ``@njit`` code only:

- ``transpose_block(source, source_start, source_row, target, target_start, target_row)``: for r, c < 8,
  ``target.flat[target_start + c * target_row + r] = source.flat[source_start + r * source_row + c]``, the flat
  indices counted in elements from the first element of each array (as a view has it), for arrays whose eight
  entries along a row lie side by side (the caller checks).
- ``scaled_transpose_block(source, ..., target, ..., scale, scale_start)``: the same, each written row multiplied
  elementwise by ``scale.flat[scale_start:scale_start + 8]``.

float32 and float64 arrays, all three of one dtype. BLOCK is the block's side.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["BLOCK", "scaled_transpose_block", "transpose_block"]

BLOCK = 8
_INTERLEAVE_LOW = tuple(v for k in range(BLOCK // 2) for v in (k, BLOCK + k))
_INTERLEAVE_HIGH = tuple(v for k in range(BLOCK // 2, BLOCK) for v in (k, BLOCK + k))
_ROUNDS = BLOCK.bit_length() - 1


def _float_arrays(*arrays) -> bool:
    return (all(isinstance(a, types.Array) for a in arrays) and arrays[0].dtype in (types.float32, types.float64)
            and all(a.dtype == arrays[0].dtype for a in arrays))


def _mask(values) -> ir.Constant:
    i32 = ir.IntType(32)
    return ir.Constant(ir.VectorType(i32, BLOCK), [ir.Constant(i32, v) for v in values])


def _emit(context, builder, arrays, array_types, starts, rows, scale_start=None):
    """The block transposition's instructions: arrays (source, target[, scale]) and their numba types, starts and
    row strides (source, target) as intp values."""
    data = [context.make_array(kind)(context, builder, value).data for kind, value in zip(array_types, arrays)]
    element = context.get_data_type(array_types[0].dtype)
    vector = ir.VectorType(element, BLOCK)
    align = array_types[0].dtype.bitwidth // 8
    intp = context.get_value_type(types.intp)

    def row_pointer(base, start, row, index):
        offset = builder.add(start, builder.mul(row, ir.Constant(intp, index)))
        return builder.bitcast(builder.gep(base, [offset]), vector.as_pointer())

    block = [builder.load(row_pointer(data[0], starts[0], rows[0], r), align=align) for r in range(BLOCK)]
    low, high = _mask(_INTERLEAVE_LOW), _mask(_INTERLEAVE_HIGH)
    for _ in range(_ROUNDS):
        block = [builder.shuffle_vector(block[r // 2], block[r // 2 + BLOCK // 2], low if r % 2 == 0 else high)
                 for r in range(BLOCK)]
    if scale_start is not None:
        factor = builder.load(row_pointer(data[2], scale_start, ir.Constant(intp, 0), 0), align=align)
        block = [builder.fmul(row, factor) for row in block]
    for c in range(BLOCK):
        builder.store(block[c], row_pointer(data[1], starts[1], rows[1], c), align=align)
    return context.get_dummy_value()


@intrinsic
def transpose_block(typingctx, source, source_start, source_row, target, target_start, target_row):
    if not _float_arrays(source, target):
        return None
    signature = types.void(source, types.intp, types.intp, target, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        source, source_start, source_row, target, target_start, target_row = args
        return _emit(context, builder, (source, target), (signature.args[0], signature.args[3]),
                     (source_start, target_start), (source_row, target_row))

    return signature, codegen


@intrinsic
def scaled_transpose_block(typingctx, source, source_start, source_row, target, target_start, target_row, scale,
                           scale_start):
    if not _float_arrays(source, target, scale):
        return None
    signature = types.void(source, types.intp, types.intp, target, types.intp, types.intp, scale, types.intp)

    def codegen(context, builder, signature, args):
        source, source_start, source_row, target, target_start, target_row, scale, scale_start = args
        array_types = (signature.args[0], signature.args[3], signature.args[6])
        return _emit(context, builder, (source, target, scale), array_types, (source_start, target_start),
                     (source_row, target_row), scale_start)

    return signature, codegen
