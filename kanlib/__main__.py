"""kanlib's command line: ``python -m kanlib <command> ...``; each command is a subparser with a handler.

    python -m kanlib bench layer --device cpu --batch 1024 --width 256 --grid 5 10 20 50

The commands parse their arguments, call the library, print and write; they measure nothing themselves.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .bench import RESULTS_DIR, format_table, resolve_device, write_results
from .benchmarks.layer import CANDIDATES, DTYPES, TABLE_COLUMNS, run_layer_benchmark


def _int_at_least(minimum: int):
    """An argparse type: an int >= minimum, with an error naming what was expected and what came."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}")
        return value

    return parse


def _add_bench_layer(benchmarks: argparse._SubParsersAction) -> None:
    layer = benchmarks.add_parser(
        "layer",
        help="a KAN layer against the dense product floor, an MLP, an unfused layer and pykan",
        description="Time forward and forward+backward of one layer (I = O = width) for each grid size: "
                    f"{', '.join(CANDIDATES)}; print a table and write data/results/layer-*.json.",
    )
    layer.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                       help="auto: cuda if available, else cpu (default: auto)")
    layer.add_argument("--batch", type=_int_at_least(1), default=1024, help="batch size B (default: 1024)")
    layer.add_argument("--width", type=_int_at_least(1), default=256,
                       help="in and out features I = O (default: 256)")
    layer.add_argument("--grid", type=_int_at_least(1), nargs="+", action="extend", dest="grids",
                       metavar="G", help="grid size(s); repeat or list several (default: 5)")
    layer.add_argument("--order", type=_int_at_least(1), default=3, help="spline order k (default: 3)")
    layer.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="(default: float32)")
    layer.add_argument("--repeat", type=_int_at_least(1), default=20,
                       help="timed runs per candidate; pykan max(3, repeat // 10) (default: 20)")
    layer.add_argument("--warmup", type=_int_at_least(0), default=3, help="untimed runs first (default: 3)")
    layer.add_argument("--seed", type=_int_at_least(0), default=0, help="inputs and parameters (default: 0)")
    layer.add_argument("--out-dir", default=RESULTS_DIR, help=f"where the JSON goes (default: {RESULTS_DIR})")
    layer.add_argument("--no-write", action="store_true", help="print the table only")
    layer.add_argument("--skip-pykan", action="store_true", help="leave out pykan (slow, memory hungry)")
    layer.set_defaults(handler=_bench_layer)


def _bench_layer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    grids = args.grids or [5]
    if len(set(grids)) != len(grids):
        parser.error(f"--grid: expected distinct grid sizes, got {grids}")
    params = {
        "batch": args.batch, "width": args.width, "grids": grids, "order": args.order, "dtype": args.dtype,
        "repeat": args.repeat, "warmup": args.warmup, "seed": args.seed, "skip_pykan": args.skip_pykan,
    }
    rows = run_layer_benchmark(device, args.batch, args.width, grids, order=args.order, dtype=DTYPES[args.dtype],
                               repeat=args.repeat, warmup=args.warmup, skip_pykan=args.skip_pykan, seed=args.seed)
    print(f"layer benchmark on {device}: batch {args.batch}, width {args.width}, order {args.order}, {args.dtype}")
    print(format_table(rows, TABLE_COLUMNS))
    if not args.no_write:
        print(f"wrote {write_results('layer', params, rows, device, out_dir=args.out_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kanlib", description="Fast, exact KAN layers: benchmarks and tools.")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark, print its table and write its results",
                                description="Run a benchmark, print its table and write its results.")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="benchmark", required=True)
    _add_bench_layer(benchmarks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the chosen command and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.handler(args, parser)


if __name__ == "__main__":
    sys.exit(main())
