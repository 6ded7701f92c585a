"""Weighted sums of rows for numba kernels, in explicit 64-byte vectors (LLVM IR built by hand).

An edge-sparse layer adds, for every live edge of an input, a weighted sum of the input's slot rows to one row of an
output tile. Written as numba loops, each edge is a loop of its own over a few hundred rows: its weights are set up,
its rows checked for overlap and its remainder handled every time, and the slot rows are read again for every edge
(the stores into the tile might overwrite them, as far as the compiler knows). This intrinsic loads a stretch of the
slot rows once into vectors, then runs the loop over the edges with the vectors held, each edge's weights broadcast
and its tile row read and written once. The vectors are 64 bytes wide (16 float32 or 8 float64): on a CPU with
AVX-512 they are its registers (numba's own loops stop at 32 bytes there), elsewhere LLVM splits them. Called from
``@njit`` code only:

- ``add_weighted_rows(tile, tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start, weight_row,
  edge_outputs, e0, e1, n_slots, n_vectors)``: for every edge e in e0 .. e1 - 1 and j < n_vectors * lanes (lanes:
  VECTOR_BYTES over the item size),
  ``tile.flat[tile_start + edge_outputs[e] * tile_row + j] += sum over s < n_slots of
  weights.flat[weight_start + e * weight_row + s] * slots.flat[slot_start + s * slot_row + j]``,
  the sum taken in the order of s by fused multiply-adds. n_slots and n_vectors are compile-time constants (literal
  integers, as a closure's constants are); the n_slots * n_vectors vectors must fit the CPU's registers (32 on
  AVX-512) with a few to spare, or they spill to memory, so a caller with more slots runs them in several calls
  (the sums go on in the same order). Flat indices count elements from each array's first element, and the caller
  keeps every index in bounds (nothing is checked). float32 and float64 arrays, all of one dtype.
- ``add_window_rows(tile, tile_start, tile_row, block, block_start, block_row, weights, weight_start, weight_row,
  edge_outputs, e0, e1, n_slots, order, n_vectors)``: the same sums, the slot rows built in the vectors from a block
  of order + 3 rows (``block.flat[block_start + b * block_row + j]``) instead of read: slot 0 is row 0 (the base
  activation); row 1 holds each entry's offset, a float, and slot 1 + m is row 2 + q for q = m + offset where
  0 <= q <= order (the window of a B-spline basis of that order), 0 elsewhere. Nothing is stored but the tile's
  rows. n_slots, order and n_vectors are literal integers.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["VECTOR_BYTES", "add_weighted_rows", "add_window_rows", "vector_lanes"]

VECTOR_BYTES = 64


def vector_lanes(itemsize: int) -> int:
    """Entries of one vector for items of itemsize bytes."""
    return VECTOR_BYTES // itemsize


def _typed(tile, rows, weights, edge_outputs, *literals) -> bool:
    floats = (types.float32, types.float64)
    return (all(isinstance(a, types.Array) for a in (tile, rows, weights, edge_outputs))
            and tile.dtype in floats and rows.dtype == tile.dtype and weights.dtype == tile.dtype
            and isinstance(edge_outputs.dtype, types.Integer)
            and all(isinstance(n, types.IntegerLiteral) for n in literals)
            and literals[0].literal_value > 0 and literals[-1].literal_value > 0
            and all(n.literal_value >= 0 for n in literals))


class _Vectors:
    """The IR of 64-byte vector loads, stores and the edges' sums, for one intrinsic's arrays of one float dtype."""

    def __init__(self, context, builder, signature, args):
        self.builder, self.args = builder, args
        self.data = [context.make_array(kind)(context, builder, value).data if isinstance(kind, types.Array) else None
                     for kind, value in zip(signature.args, args)]
        dtype = signature.args[0].dtype
        self.lanes = vector_lanes(dtype.bitwidth // 8)
        self.vector = ir.VectorType(context.get_data_type(dtype), self.lanes)
        self.intp = context.get_value_type(types.intp)
        self.align = dtype.bitwidth // 8
        self.fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(self.vector, [self.vector] * 3),
                                                  f"llvm.fma.v{self.lanes}f{dtype.bitwidth}")

    def constant(self, value):
        return ir.Constant(self.intp, value)

    def _at(self, array, offset):
        return self.builder.bitcast(self.builder.gep(self.data[array], [offset]), self.vector.as_pointer())

    def load_rows(self, array, start, row, count, width):
        """[row r][vector v] for r < count, v < width: array.flat[start + r * row + v * lanes:][:lanes]."""
        b = self.builder
        return [[b.load(self._at(array, b.add(b.add(start, b.mul(row, self.constant(r))),
                                              self.constant(v * self.lanes))), align=self.align)
                 for v in range(width)] for r in range(count)]

    def windowed(self, block, order, n_slots):
        """The slot vectors of :func:`add_window_rows` from the block's vectors ([row][vector])."""
        b = self.builder
        base, offsets, window = block[0], block[1], block[2:]
        zero = ir.Constant(self.vector, None)
        slots = [base]
        for m in range(n_slots - 1):
            row = []
            for v, offset in enumerate(offsets):
                entry = b.fadd(offset, ir.Constant(self.vector, [ir.Constant(self.vector.element, m)] * self.lanes))
                value = zero
                for q in range(order + 1):
                    at_q = b.fcmp_ordered("==", entry, ir.Constant(self.vector,
                                                                   [ir.Constant(self.vector.element, q)] * self.lanes))
                    value = b.select(at_q, window[q][v], value)
                row.append(value)
            slots.append(row)
        return slots

    def edge_sums(self, tile, tile_start, tile_row, weights, weight_start, weight_row, edge_outputs, e0, e1, slots):
        """The loop over the edges e0 .. e1 - 1: each output row's vectors plus its weights times the slot vectors."""
        b, lanes = self.builder, self.lanes
        i32 = ir.IntType(32)
        broadcast = ir.Constant(ir.VectorType(i32, lanes), [ir.Constant(i32, 0)] * lanes)
        undefined = ir.Constant(self.vector, ir.Undefined)
        with cgutils.for_range_slice(b, e0, e1, self.constant(1)) as (edge, _):
            output = b.load(b.gep(self.data[edge_outputs], [edge]))
            if output.type.width < self.intp.width:
                output = b.sext(output, self.intp)
            elif output.type.width > self.intp.width:
                output = b.trunc(output, self.intp)
            row = b.add(tile_start, b.mul(output, tile_row))
            at = [self._at(tile, b.add(row, self.constant(v * lanes))) for v in range(len(slots[0]))]
            sums = [b.load(pointer, align=self.align) for pointer in at]
            first = b.add(weight_start, b.mul(edge, weight_row))
            for s, slot in enumerate(slots):
                weight = b.load(b.gep(self.data[weights], [b.add(first, self.constant(s))]))
                splat = b.shuffle_vector(b.insert_element(undefined, weight, ir.Constant(i32, 0)), undefined, broadcast)
                sums = [b.call(self.fma, [splat, vector, total]) for vector, total in zip(slot, sums)]
            for total, pointer in zip(sums, at):
                b.store(total, pointer, align=self.align)


def _signature(tile, rows, weights, edge_outputs, literals):
    return types.void(tile, types.intp, types.intp, rows, types.intp, types.intp, weights, types.intp, types.intp,
                      edge_outputs, types.intp, types.intp, *literals)


@intrinsic
def add_weighted_rows(typingctx, tile, tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start,
                      weight_row, edge_outputs, e0, e1, n_slots, n_vectors):
    if not _typed(tile, slots, weights, edge_outputs, n_slots, n_vectors):
        return None
    count, width = n_slots.literal_value, n_vectors.literal_value

    def codegen(context, builder, signature, args):
        vectors = _Vectors(context, builder, signature, args)
        rows = vectors.load_rows(3, args[4], args[5], count, width)
        vectors.edge_sums(0, args[1], args[2], 6, args[7], args[8], 9, args[10], args[11], rows)
        return context.get_dummy_value()

    return _signature(tile, slots, weights, edge_outputs, (n_slots, n_vectors)), codegen


@intrinsic
def add_window_rows(typingctx, tile, tile_start, tile_row, block, block_start, block_row, weights, weight_start,
                    weight_row, edge_outputs, e0, e1, n_slots, order, n_vectors):
    if not _typed(tile, block, weights, edge_outputs, n_slots, order, n_vectors):
        return None
    count, degree, width = n_slots.literal_value, order.literal_value, n_vectors.literal_value

    def codegen(context, builder, signature, args):
        vectors = _Vectors(context, builder, signature, args)
        block_rows = vectors.load_rows(3, args[4], args[5], degree + 3, width)
        slots = vectors.windowed(block_rows, degree, count)
        vectors.edge_sums(0, args[1], args[2], 6, args[7], args[8], 9, args[10], args[11], slots)
        return context.get_dummy_value()

    return _signature(tile, block, weights, edge_outputs, (n_slots, order, n_vectors)), codegen
