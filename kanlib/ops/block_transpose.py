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
- ``gradient_block(coef, coef_start, coef_row, gradient, gradient_start, gradient_row, target, rows, rows_start,
  rows_row, scale, scale_start, sums)``: an 8 x 8 block of a weight's gradient folded onto the parameters that make
  the weight, ``weight[r, c] = scale[c] * coef[c, r]`` (r a basis, c an output). With ``C[c, r] =
  coef.flat[coef_start + c * coef_row + r]`` and ``g[r, c] = gradient.flat[gradient_start + r * gradient_row + c]``:
  ``target.flat[coef_start + c * coef_row + r] = g[r, c] * scale.flat[scale_start + c]`` (target laid out as coef)
  and ``sums.flat[c] += sum over r of g[r, c] * C[c, r]``.
- ``weight_and_gradient_block(...)``, the same arguments: also the weight's block, ``rows.flat[rows_start + r *
  rows_row + c] = C[c, r] * scale.flat[scale_start + c]``, from the coefficients read once.

float32 and float64 arrays, all of one dtype. BLOCK is the block's side.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["BLOCK", "gradient_block", "scaled_transpose_block", "transpose_block", "weight_and_gradient_block"]

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


class _Vectors:
    """Loads and stores of 8-entry rows of numba arrays, in the LLVM IR being built."""

    def __init__(self, context, builder, arrays, array_types):
        self.builder = builder
        self.data = [context.make_array(kind)(context, builder, value).data for kind, value in zip(array_types, arrays)]
        self.vector = ir.VectorType(context.get_data_type(array_types[0].dtype), BLOCK)
        self.align = array_types[0].dtype.bitwidth // 8
        self.intp = context.get_value_type(types.intp)

    def _pointer(self, array, start, row, index):
        offset = self.builder.add(start, self.builder.mul(row, ir.Constant(self.intp, index)))
        return self.builder.bitcast(self.builder.gep(self.data[array], [offset]), self.vector.as_pointer())

    def load_rows(self, array, start, row):
        """The 8 rows array.flat[start + r * row : + 8] for r < 8."""
        return [self.builder.load(self._pointer(array, start, row, r), align=self.align) for r in range(BLOCK)]

    def load(self, array, start):
        """The vector array.flat[start : start + 8]."""
        return self.load_rows(array, start, ir.Constant(self.intp, 0))[0]

    def store_rows(self, array, start, row, vectors):
        for r, vector in enumerate(vectors):
            self.builder.store(vector, self._pointer(array, start, row, r), align=self.align)

    def store(self, array, start, vector):
        """array.flat[start : start + 8] = vector."""
        self.store_rows(array, start, ir.Constant(self.intp, 0), [vector])

    def transposed(self, block):
        low, high = _mask(_INTERLEAVE_LOW), _mask(_INTERLEAVE_HIGH)
        for _ in range(_ROUNDS):
            block = [self.builder.shuffle_vector(block[r // 2], block[r // 2 + BLOCK // 2], low if r % 2 == 0 else high)
                     for r in range(BLOCK)]
        return block

    def splat(self, value):
        """A vector of 8 copies of a scalar."""
        i32 = ir.IntType(32)
        one = self.builder.insert_element(ir.Constant(self.vector, ir.Undefined), value, ir.Constant(i32, 0))
        return self.builder.shuffle_vector(one, ir.Constant(self.vector, ir.Undefined),
                                           ir.Constant(ir.VectorType(i32, BLOCK), [ir.Constant(i32, 0)] * BLOCK))


def _emit(context, builder, arrays, array_types, starts, rows, scale_start=None):
    """The block transposition's instructions: arrays (source, target[, scale]) and their numba types, starts and
    row strides (source, target) as intp values."""
    vectors = _Vectors(context, builder, arrays, array_types)
    block = vectors.transposed(vectors.load_rows(0, starts[0], rows[0]))
    if scale_start is not None:
        factor = vectors.load(2, scale_start)
        block = [builder.fmul(row, factor) for row in block]
    vectors.store_rows(1, starts[1], rows[1], block)
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


def _gradient_block(with_rows: bool):
    """The intrinsic ``weight_and_gradient_block`` (with_rows) or ``gradient_block``: see the module's text."""
    def typer(typingctx, coef, coef_start, coef_row, gradient, gradient_start, gradient_row, target, rows, rows_start,
              rows_row, scale, scale_start, sums):
        if not _float_arrays(coef, gradient, target, rows, scale, sums):
            return None
        signature = types.void(coef, types.intp, types.intp, gradient, types.intp, types.intp, target, rows,
                               types.intp, types.intp, scale, types.intp, sums)

        def codegen(context, builder, signature, args):
            (coef, coef_start, coef_row, gradient, gradient_start, gradient_row, target, rows, rows_start, rows_row,
             scale, scale_start, sums) = args
            array_types = tuple(signature.args[a] for a in (0, 3, 6, 7, 10, 12))
            vectors = _Vectors(context, builder, (coef, gradient, target, rows, scale, sums), array_types)
            by_basis = vectors.transposed(vectors.load_rows(0, coef_start, coef_row))  # [r] along the outputs
            if with_rows:
                factor = vectors.load(4, scale_start)
                vectors.store_rows(3, rows_start, rows_row, [builder.fmul(row, factor) for row in by_basis])
            gradients = vectors.load_rows(1, gradient_start, gradient_row)
            first = ir.Constant(vectors.intp, 0)
            total = vectors.load(5, first)
            for g, c in zip(gradients, by_basis):
                total = builder.fadd(total, builder.fmul(g, c))
            vectors.store(5, first, total)
            written = []
            for c, row in enumerate(vectors.transposed(gradients)):
                scale_at = builder.gep(vectors.data[4], [builder.add(scale_start, ir.Constant(vectors.intp, c))])
                written.append(builder.fmul(row, vectors.splat(builder.load(scale_at))))
            vectors.store_rows(2, coef_start, coef_row, written)
            return context.get_dummy_value()

        return signature, codegen

    typer.__name__ = "weight_and_gradient_block" if with_rows else "gradient_block"
    return intrinsic(typer)


gradient_block = _gradient_block(with_rows=False)
weight_and_gradient_block = _gradient_block(with_rows=True)
