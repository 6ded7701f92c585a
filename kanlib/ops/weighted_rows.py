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
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["VECTOR_BYTES", "add_weighted_rows", "vector_lanes"]

VECTOR_BYTES = 64


def vector_lanes(itemsize: int) -> int:
    """Entries of one vector for items of itemsize bytes."""
    return VECTOR_BYTES // itemsize


def _typed(tile, slots, weights, edge_outputs, n_slots, n_vectors) -> bool:
    floats = (types.float32, types.float64)
    return (all(isinstance(a, types.Array) for a in (tile, slots, weights, edge_outputs))
            and tile.dtype in floats and slots.dtype == tile.dtype and weights.dtype == tile.dtype
            and isinstance(edge_outputs.dtype, types.Integer)
            and isinstance(n_slots, types.IntegerLiteral) and isinstance(n_vectors, types.IntegerLiteral)
            and n_slots.literal_value > 0 and n_vectors.literal_value > 0)


@intrinsic
def add_weighted_rows(typingctx, tile, tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start,
                      weight_row, edge_outputs, e0, e1, n_slots, n_vectors):
    if not _typed(tile, slots, weights, edge_outputs, n_slots, n_vectors):
        return None
    signature = types.void(tile, types.intp, types.intp, slots, types.intp, types.intp, weights, types.intp, types.intp,
                           edge_outputs, types.intp, types.intp, n_slots, n_vectors)
    count, width = n_slots.literal_value, n_vectors.literal_value

    def codegen(context, builder, signature, args):
        tile, tile_start, tile_row, slots, slot_start, slot_row, weights, weight_start, weight_row = args[:9]
        edge_outputs, e0, e1 = args[9:12]
        dtype = signature.args[0].dtype
        lanes = vector_lanes(dtype.bitwidth // 8)
        vector = ir.VectorType(context.get_data_type(dtype), lanes)
        intp = context.get_value_type(types.intp)
        i32 = ir.IntType(32)
        align = dtype.bitwidth // 8

        def data(position, value):
            return context.make_array(signature.args[position])(context, builder, value).data

        tile_data, slot_data, weight_data, output_data = (data(0, tile), data(3, slots), data(6, weights),
                                                          data(9, edge_outputs))

        def constant(value):
            return ir.Constant(intp, value)

        def vector_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), vector.as_pointer())

        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3),
                                             f"llvm.fma.v{lanes}f{dtype.bitwidth}")
        broadcast = ir.Constant(ir.VectorType(i32, lanes), [ir.Constant(i32, 0)] * lanes)
        rows = [[builder.load(vector_at(slot_data, builder.add(builder.add(slot_start, builder.mul(slot_row,
                                                                                                   constant(s))),
                                                               constant(v * lanes))), align=align)
                 for v in range(width)] for s in range(count)]
        with cgutils.for_range_slice(builder, e0, e1, constant(1)) as (edge, _):
            output = builder.load(builder.gep(output_data, [edge]))
            if output.type.width != intp.width:
                output = builder.sext(output, intp) if output.type.width < intp.width else builder.trunc(output, intp)
            row = builder.add(tile_start, builder.mul(output, tile_row))
            sums = [builder.load(vector_at(tile_data, builder.add(row, constant(v * lanes))), align=align)
                    for v in range(width)]
            first = builder.add(weight_start, builder.mul(edge, weight_row))
            for s in range(count):
                weight = builder.load(builder.gep(weight_data, [builder.add(first, constant(s))]))
                lane = builder.insert_element(ir.Constant(vector, ir.Undefined), weight, ir.Constant(i32, 0))
                splat = builder.shuffle_vector(lane, ir.Constant(vector, ir.Undefined), broadcast)
                sums = [builder.call(fma, [splat, rows[s][v], sums[v]]) for v in range(width)]
            for v in range(width):
                builder.store(sums[v], vector_at(tile_data, builder.add(row, constant(v * lanes))), align=align)
        return context.get_dummy_value()

    return signature, codegen
