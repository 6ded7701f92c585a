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
  rows. n_slots, order and n_vectors are literal integers. On a CPU with AVX-512 (and PERMUTED_WINDOWS set), and
  for at most TABLE_VECTORS vectors of slots (32 float32, 16 float64), each edge's weights are instead loaded as a
  table of whole vectors (:func:`window_table`) from its first, and each window entry q picks its basis's weight from
  it by a vector permute (``vpermps`` from one vector, ``vpermi2ps`` or ``vpermt2ps`` from two; ``vpermpd`` and
  ``vpermi2pd`` in float64): an edge then costs order + 2 multiply-adds per vector instead of n_slots, in the same
  order as the slots' nonzero terms. The caller keeps :func:`window_table` entries readable from every edge's first
  weight (entries past n_slots are read, never used).
- ``add_edge_gradients(slots, slopes, slot_start, slot_row, grads, grad_start, grad_row, weights, grad_weights,
  weight_start, weight_row, grad_x, grad_x_start, edge_outputs, e0, e1, n_chunks, need_x, n_slots, n_vectors)``:
  the gradients of those sums, over n_chunks stretches of n_vectors vectors (rows j < n_chunks * n_vectors * lanes).
  With g_e[j] = ``grads.flat[grad_start + edge_outputs[e] * grad_row + j]``, for every edge e in e0 .. e1 - 1 and
  s < n_slots: ``grad_weights.flat[weight_start + e * weight_row + s] += sum over j of g_e[j] *
  slots.flat[slot_start + s * slot_row + j]``, and with need_x (a runtime boolean)
  ``grad_x.flat[grad_x_start + j] += g_e[j] * sum over s of weights.flat[weight_start + e * weight_row + s] *
  slopes.flat[slot_start + s * slot_row + j]``, the edges in turn. The sums over j are taken in vectors, then
  across their lanes: not in the order of j.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic

__all__ = ["TABLE_VECTORS", "VECTOR_BYTES", "add_edge_gradients", "add_weighted_rows", "add_window_rows",
           "permutes_on", "permutes_windows", "target_features", "vector_lanes", "window_table"]

VECTOR_BYTES = 64
# Vectors of an edge's weights that add_window_rows permutes at most (an x86 permute picks from one or two)
TABLE_VECTORS = 2
# Whether add_window_rows may permute where the CPU allows it; the tests switch it off to reach the selects
PERMUTED_WINDOWS = True


def vector_lanes(itemsize: int) -> int:
    """Entries of one vector for items of itemsize bytes."""
    return VECTOR_BYTES // itemsize


@njit(inline="always", cache=True)
def window_table(n_slots, itemsize):
    """The entries of an edge's weights that :func:`add_window_rows` reads where it permutes: n_slots rounded up to
    whole vectors (callable from numba code)."""
    lanes = VECTOR_BYTES // itemsize
    return (n_slots + lanes - 1) // lanes * lanes


def target_features() -> str:
    """The CPU features numba compiles for (LLVM's ``+name`` list): NUMBA_CPU_FEATURES where set, else the host's."""
    return config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()


def permutes_on(cpu_features: str | None = None) -> bool:
    """Whether :func:`add_window_rows` compiled for a CPU of these features (by default :func:`target_features`)
    permutes the weights of edges with at most TABLE_VECTORS vectors of them: the CPU has AVX-512 and
    PERMUTED_WINDOWS is set."""
    features = target_features() if cpu_features is None else cpu_features
    return PERMUTED_WINDOWS and "+avx512f" in features.split(",")


def permutes_windows(n_slots: int, itemsize: int, cpu_features: str | None = None) -> bool:
    """Whether :func:`add_window_rows` permutes each edge's table of n_slots weights of itemsize bytes on a CPU of
    these features (:func:`permutes_on`), else it builds every slot by selects."""
    return permutes_on(cpu_features) and n_slots <= TABLE_VECTORS * vector_lanes(itemsize)


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

    def constant_vector(self, value):
        """A vector of lanes copies of a float constant, in the arrays' dtype."""
        return ir.Constant(self.vector, [ir.Constant(self.vector.element, value)] * self.lanes)

    def _at(self, array, offset):
        return self.builder.bitcast(self.builder.gep(self.data[array], [offset]), self.vector.as_pointer())

    def index(self, value):
        """An integer value as intp."""
        if value.type.width < self.intp.width:
            return self.builder.sext(value, self.intp)
        return self.builder.trunc(value, self.intp) if value.type.width > self.intp.width else value

    def store_row(self, array, start, vectors):
        """array.flat[start + v * lanes:][:lanes] = vectors[v]."""
        for v, vector in enumerate(vectors):
            self.builder.store(vector, self._at(array, self.builder.add(start, self.constant(v * self.lanes))),
                               align=self.align)

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
                entry = b.fadd(offset, self.constant_vector(m))
                value = zero
                for q in range(order + 1):
                    value = b.select(b.fcmp_ordered("==", entry, self.constant_vector(q)), window[q][v], value)
                row.append(value)
            slots.append(row)
        return slots

    def window_edge_sums(self, tile, tile_start, tile_row, weights, weight_start, weight_row, edge_outputs, e0, e1,
                         block, order, n_slots):
        """:meth:`edge_sums` of the slots of :meth:`windowed` by vector permutes: for each window entry q, the index
        of its basis's weight (1 + q - offset) and its value, 0 where that basis does not exist, are set up once;
        then each edge picks its weights for every lane from its table of one or two vectors."""
        b, lanes = self.builder, self.lanes
        bits = 8 * self.align
        index_type = ir.VectorType(ir.IntType(bits), lanes)
        zero = ir.Constant(self.vector, None)
        base, offsets, window = block[0], block[1], block[2:]
        indices, values = [], []
        for q in range(order + 1):
            index_row, value_row = [], []
            for v, offset in enumerate(offsets):
                basis = b.fsub(self.constant_vector(q), offset)
                exists = b.and_(b.fcmp_ordered(">=", basis, zero),
                                b.fcmp_ordered("<", basis, self.constant_vector(n_slots - 1)))
                index_row.append(b.fptosi(b.select(exists, b.fadd(basis, self.constant_vector(1)), zero), index_type))
                value_row.append(b.select(exists, window[q][v], zero))
            indices.append(index_row)
            values.append(value_row)
        n_tables = (n_slots + lanes - 1) // lanes
        letter = "s" if bits == 32 else "d"
        if n_tables == 1:
            permute = cgutils.get_or_insert_function(b.module, ir.FunctionType(self.vector, [self.vector, index_type]),
                                                     f"llvm.x86.avx512.permvar.{letter}f.512")
        else:
            permute = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(self.vector, [self.vector, index_type, self.vector]),
                f"llvm.x86.avx512.vpermi2var.p{letter}.512")

        def add_terms(sums, first):
            table = [b.load(self._at(weights, b.add(first, self.constant(t * lanes))), align=self.align)
                     for t in range(n_tables)]
            splat = self.splat(b.extract_element(table[0], ir.Constant(ir.IntType(32), 0)))
            sums = [b.call(self.fma, [splat, vector, total]) for vector, total in zip(base, sums)]
            for index_row, value_row in zip(indices, values):
                picked = [b.call(permute, [table[0], index] if len(table) == 1 else [table[0], index, table[1]])
                          for index in index_row]
                sums = [b.call(self.fma, [weight, value, total])
                        for weight, value, total in zip(picked, value_row, sums)]
            return sums

        self.edge_loop(tile, tile_start, tile_row, weight_start, weight_row, edge_outputs, e0, e1, len(base), add_terms)

    def splat(self, value):
        """A vector of lanes copies of a scalar."""
        i32 = ir.IntType(32)
        undefined = ir.Constant(self.vector, ir.Undefined)
        zeros = ir.Constant(ir.VectorType(i32, self.lanes), [ir.Constant(i32, 0)] * self.lanes)
        return self.builder.shuffle_vector(self.builder.insert_element(undefined, value, ir.Constant(i32, 0)),
                                           undefined, zeros)

    def lane_sum(self, vector):
        """The sum of a vector's lanes, halves added to halves."""
        b, i32 = self.builder, ir.IntType(32)
        width = self.lanes
        while width > 1:
            width //= 2
            low = ir.Constant(ir.VectorType(i32, width), [ir.Constant(i32, j) for j in range(width)])
            high = ir.Constant(ir.VectorType(i32, width), [ir.Constant(i32, width + j) for j in range(width)])
            vector = b.fadd(b.shuffle_vector(vector, vector, low), b.shuffle_vector(vector, vector, high))
        return b.extract_element(vector, ir.Constant(i32, 0))

    def edge_loop(self, tile, tile_start, tile_row, weight_start, weight_row, edge_outputs, e0, e1, width, add_terms):
        """The loop over the edges e0 .. e1 - 1: each edge's output row (width vectors) loaded, add_terms(sums, first)
        of it (first: the flat index of the edge's first weight) stored back."""
        b, lanes = self.builder, self.lanes
        with cgutils.for_range_slice(b, e0, e1, self.constant(1)) as (edge, _):
            output = self.index(b.load(b.gep(self.data[edge_outputs], [edge])))
            row = b.add(tile_start, b.mul(output, tile_row))
            at = [self._at(tile, b.add(row, self.constant(v * lanes))) for v in range(width)]
            sums = [b.load(pointer, align=self.align) for pointer in at]
            for total, pointer in zip(add_terms(sums, b.add(weight_start, b.mul(edge, weight_row))), at):
                b.store(total, pointer, align=self.align)

    def edge_sums(self, tile, tile_start, tile_row, weights, weight_start, weight_row, edge_outputs, e0, e1, slots):
        """The loop over the edges e0 .. e1 - 1: each output row's vectors plus its weights times the slot vectors."""
        b = self.builder

        def add_terms(sums, first):
            for s, slot in enumerate(slots):
                weight = b.load(b.gep(self.data[weights], [b.add(first, self.constant(s))]))
                splat = self.splat(weight)
                sums = [b.call(self.fma, [splat, vector, total]) for vector, total in zip(slot, sums)]
            return sums

        self.edge_loop(tile, tile_start, tile_row, weight_start, weight_row, edge_outputs, e0, e1, len(slots[0]),
                       add_terms)


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
        if permutes_windows(count, vectors.align):
            vectors.window_edge_sums(0, args[1], args[2], 6, args[7], args[8], 9, args[10], args[11], block_rows,
                                     degree, count)
        else:
            slots = vectors.windowed(block_rows, degree, count)
            vectors.edge_sums(0, args[1], args[2], 6, args[7], args[8], 9, args[10], args[11], slots)
        return context.get_dummy_value()

    return _signature(tile, block, weights, edge_outputs, (n_slots, order, n_vectors)), codegen


@intrinsic
def add_edge_gradients(typingctx, slots, slopes, slot_start, slot_row, grads, grad_start, grad_row, weights,
                       grad_weights, weight_start, weight_row, grad_x, grad_x_start, edge_outputs, e0, e1, n_chunks,
                       need_x, n_slots, n_vectors):
    arrays = (slots, slopes, grads, weights, grad_weights, grad_x)
    if (not _typed(slots, slopes, weights, edge_outputs, n_slots, n_vectors)
            or any(not isinstance(a, types.Array) or a.dtype != slots.dtype for a in arrays)
            or not isinstance(need_x, types.Boolean)):
        return None
    count, width = n_slots.literal_value, n_vectors.literal_value
    intp = types.intp
    signature = types.void(slots, slopes, intp, intp, grads, intp, intp, weights, grad_weights, intp, intp, grad_x,
                           intp, edge_outputs, intp, intp, intp, types.boolean, n_slots, n_vectors)

    def codegen(context, builder, signature, args):
        (slots, slopes, slot_start, slot_row, grads, grad_start, grad_row, weights, grad_weights, weight_start,
         weight_row, grad_x, grad_x_start, edge_outputs, e0, e1, n_chunks, need_x) = args[:18]
        vectors = _Vectors(context, builder, signature, args)
        b, lanes = builder, vectors.lanes
        chunk = vectors.constant(width * lanes)
        sums = [[cgutils.alloca_once(b, vectors.vector) for _ in range(width)] for _ in range(count)]
        with cgutils.for_range_slice(b, e0, e1, vectors.constant(1)) as (edge, _):
            output = vectors.index(b.load(b.gep(vectors.data[13], [edge])))
            grad_row_start = b.add(grad_start, b.mul(output, grad_row))
            first = b.add(weight_start, b.mul(edge, weight_row))
            splats = [vectors.splat(b.load(b.gep(vectors.data[7], [b.add(first, vectors.constant(s))])))
                      for s in range(count)]
            for row in sums:
                for total in row:
                    b.store(ir.Constant(vectors.vector, None), total)
            with cgutils.for_range(b, n_chunks) as loop:
                offset = b.mul(loop.index, chunk)
                g = vectors.load_rows(4, b.add(grad_row_start, offset), vectors.constant(0), 1, width)[0]
                at_slots = b.add(slot_start, offset)
                values = vectors.load_rows(0, at_slots, slot_row, count, width)
                for s in range(count):
                    for v in range(width):
                        b.store(b.call(vectors.fma, [g[v], values[s][v], b.load(sums[s][v])]), sums[s][v])
                with b.if_then(need_x):
                    slope_rows = vectors.load_rows(1, at_slots, slot_row, count, width)
                    x_start = b.add(grad_x_start, offset)
                    x_rows = vectors.load_rows(11, x_start, vectors.constant(0), 1, width)[0]
                    for v in range(width):
                        slope = b.fmul(splats[0], slope_rows[0][v])
                        for s in range(1, count):
                            slope = b.call(vectors.fma, [splats[s], slope_rows[s][v], slope])
                        x_rows[v] = b.call(vectors.fma, [g[v], slope, x_rows[v]])
                    vectors.store_row(11, x_start, x_rows)
            for s in range(count):
                total = b.load(sums[s][0])
                for v in range(1, width):
                    total = b.fadd(total, b.load(sums[s][v]))
                pointer = b.gep(vectors.data[8], [b.add(first, vectors.constant(s))])
                b.store(b.fadd(b.load(pointer), vectors.lane_sum(total)), pointer)
        return context.get_dummy_value()

    return signature, codegen
