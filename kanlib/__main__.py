"""kanlib's command line: ``python -m kanlib <command> ...``; each command is a subparser with a handler,
which gets that subparser for its errors (their usage line is the command's).

    python -m kanlib bench layer --device cpu --batch 1024 --width 256 --grid 5 10 20 50
    python -m kanlib bench kernel --device cuda

The commands parse their arguments, call the library, print and write; they measure nothing themselves.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
from collections.abc import Iterator, Sequence

from .bench import (RESULTS_DIR, can_retain_freed_memory, format_table, resolve_device, retain_freed_memory,
                    write_results)
from .bench import kernel
from .bench.candidates import DTYPES
from .bench.layer import CANDIDATES, GRAPHED_CANDIDATES, SWEEP_COLUMNS, TABLE_COLUMNS, run_layer_benchmark
from .bench.layer import target_report as layer_target_report
from .bench.targets import format_targets
from .checks import OutputDirError, check_output_dir


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


class _CommandFailed(Exception):
    """A command's expected error (its cause): :func:`main` prints ``kanlib <command>: <error>`` and returns 1."""


@contextlib.contextmanager
def _fails_on(*errors: type[Exception]) -> Iterator[None]:
    """Within the block, one of errors ends the command as :class:`_CommandFailed`, without a traceback."""
    try:
        yield
    except errors as error:
        raise _CommandFailed from error


def _require_distinct(parser: argparse.ArgumentParser, flag: str, values, what: str = "values") -> None:
    """The command's usage error unless ``values`` (given for ``flag``; None when not) are distinct."""
    if values is not None and len(set(values)) != len(values):
        parser.error(f"{flag}: expected distinct {what}, got {values}")


def _device(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The device --device names (:func:`~kanlib.bench.resolve_device`), or the command's usage error."""
    try:
        return resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))


def _check_out_dir(args: argparse.Namespace) -> None:
    """Unless --no-write, fail the command before anything is measured when --out-dir cannot take the results."""
    if not args.no_write:
        with _fails_on(OutputDirError):
            check_output_dir(args.out_dir, "--out-dir")


def _add_common_options(parser: argparse.ArgumentParser, repeat_help: str = "timed runs per candidate", *,
                        repeated: bool = True) -> None:
    """The options of every benchmark: device, where results go; with ``repeated``, repetitions and seed."""
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                        help="auto: cuda if available, else cpu (default: auto)")
    if repeated:
        parser.add_argument("--repeat", type=_int_at_least(1), default=20, help=f"{repeat_help} (default: 20)")
        parser.add_argument("--warmup", type=_int_at_least(0), default=3, help="untimed runs first (default: 3)")
        parser.add_argument("--seed", type=_int_at_least(0), default=0, help="inputs and parameters (default: 0)")
    parser.add_argument("--out-dir", default=RESULTS_DIR, help=f"where the JSON goes (default: {RESULTS_DIR})")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    retain = can_retain_freed_memory()
    parser.add_argument("--malloc", choices=("retain", "default") if retain else ("default",),
                        default="retain" if retain else "default",
                        help="retain: glibc's malloc keeps freed memory instead of trimming it and faulting it "
                             "back in on later steps (kanlib.bench.retain_freed_memory); default: leave the C "
                             f"allocator as it is (default: {'retain' if retain else 'default'})")


def _benchmark_device(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """The device --device names, once --out-dir is checked and --malloc applied (before anything is measured)."""
    device = _device(args, parser)
    _check_out_dir(args)
    if args.malloc == "retain":
        retain_freed_memory()
    return device


def _write_results(name: str, params: dict, rows: list[dict], device, args: argparse.Namespace) -> int:
    """Write the results to --out-dir and return 0; if that fails, to a temporary folder named on stderr, and 1."""
    if args.no_write:
        return 0
    try:
        path = write_results(name, params, rows, device, out_dir=args.out_dir)
    except (OSError, OutputDirError) as error:
        kept = write_results(name, params, rows, device, out_dir=tempfile.mkdtemp(prefix=f"kanlib-{name}-"))
        print(f"kanlib bench: could not write the results to {args.out_dir} ({error}); wrote them to {kept} instead",
              file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def _add_shape_options(parser: argparse.ArgumentParser, grid_help: str, grid_minimum: int = 1) -> None:
    """--batch, --width (I = O) and --grid (into ``grids``; None when not given): the layer a benchmark times."""
    parser.add_argument("--batch", type=_int_at_least(1), default=1024, help="batch size B (default: 1024)")
    parser.add_argument("--width", type=_int_at_least(1), default=256, help="in and out features I = O (default: 256)")
    parser.add_argument("--grid", type=_int_at_least(grid_minimum), nargs="+", action="extend", dest="grids",
                        metavar="G", help=grid_help)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options the layer and kernel benchmarks share besides the common ones: spline order, pykan."""
    _add_common_options(parser, "timed runs per candidate; pykan max(3, repeat // 10)")
    parser.add_argument("--order", type=_int_at_least(1), default=3, help="spline order k (default: 3)")
    parser.add_argument("--skip-pykan", action="store_true", help="leave out pykan (slow, memory hungry)")


def _add_bench_layer(benchmarks: argparse._SubParsersAction) -> None:
    layer = benchmarks.add_parser(
        "layer",
        help="a KAN layer against the dense product floor, an MLP, an unfused layer, flashkan, inkan and pykan",
        description="Time forward and forward+backward of one layer (I = O = width) for each grid size: "
                    f"{', '.join(CANDIDATES)} (on CUDA also {', '.join(GRAPHED_CANDIDATES)}: dense and bsplinekan "
                    "replayed from CUDA graphs); print a table and write data/results/layer-*.json.",
    )
    _add_shape_options(layer, "grid size(s); repeat or list several (default: 5)")
    layer.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="(default: float32)")
    _add_run_options(layer)
    layer.set_defaults(handler=_bench_layer, command_parser=layer)


def _bench_layer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = _benchmark_device(args, parser)
    grids = args.grids or [5]
    _require_distinct(parser, "--grid", grids, "grid sizes")
    params = {
        "batch": args.batch, "width": args.width, "grids": grids, "order": args.order, "dtype": args.dtype,
        "repeat": args.repeat, "warmup": args.warmup, "seed": args.seed, "skip_pykan": args.skip_pykan,
    }
    rows = run_layer_benchmark(device, args.batch, args.width, grids, order=args.order, dtype=DTYPES[args.dtype],
                               repeat=args.repeat, warmup=args.warmup, skip_pykan=args.skip_pykan, seed=args.seed)
    print(f"layer benchmark on {device}: batch {args.batch}, width {args.width}, order {args.order}, {args.dtype}")
    print(format_table(rows, TABLE_COLUMNS))
    swept = [row for row in rows if "sweep_fwdbwd_median_ms" in row]
    if swept:
        print("bsplinekan's training step at every grid size again, in alternation (the grid sweep's ratios):")
        print(format_table(swept, SWEEP_COLUMNS))
    graphed = [row for row in rows if "ratio_to_dense_graphed" in row]
    if graphed:
        print("bsplinekan over dense, both replayed from CUDA graphs (the host's launches left out):")
        print(format_table(graphed, ("grid", "candidate", "fwdbwd_median_ms", "ratio_to_dense_graphed")))
    print("targets (at batch 1024, width 256, order 3, float32):")
    print(format_targets(layer_target_report(rows), ".3g"))
    return _write_results("layer", params, rows, device, args)


def _add_bench_families(benchmarks: argparse._SubParsersAction) -> None:
    from .bench.families import CANDIDATES as FAMILY_CANDIDATES, FAMILIES

    parser = benchmarks.add_parser(
        "families",
        help="the RBF, RSWAF, ReLU-KAN and Chebyshev layers against the dense product of the same K, their eager "
             "reference and fast-kan's formula",
        description="Time forward and forward+backward of each family's layer (I = O = width) for each grid size: "
                    f"{', '.join(FAMILY_CANDIDATES)} (fastkan for rbf only), and one MLP layer; print a table and "
                    "the targets, and write data/results/families-*.json.",
    )
    _add_shape_options(parser, "grid size(s), ChebyKAN at degree G - 1; repeat or list several (default: 5)",
                       grid_minimum=2)
    parser.add_argument("--family", choices=FAMILIES, nargs="+", action="extend", dest="families",
                        help=f"(default: {' '.join(FAMILIES)})")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="(default: float32)")
    _add_common_options(parser)
    parser.set_defaults(handler=_bench_families, command_parser=parser)


def _bench_families(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import families

    device = _benchmark_device(args, parser)
    grids = args.grids or [5]
    chosen = args.families or list(families.FAMILIES)
    for flag, values in (("--grid", grids), ("--family", chosen)):
        _require_distinct(parser, flag, values)
    params = {"batch": args.batch, "width": args.width, "grids": grids, "families": chosen, "dtype": args.dtype,
              "repeat": args.repeat, "warmup": args.warmup, "seed": args.seed}
    rows = families.run_families_benchmark(device, args.batch, args.width, grids, families=chosen,
                                           dtype=DTYPES[args.dtype], repeat=args.repeat, warmup=args.warmup,
                                           seed=args.seed)
    print(f"families benchmark on {device}: batch {args.batch}, width {args.width}, {args.dtype}")
    print(format_table(rows, families.TABLE_COLUMNS))
    configuration = families.TARGET_CONFIGURATION
    print(f"targets (at batch {configuration['batch']}, width {configuration['width']}, {configuration['dtype']}):")
    print(format_targets(families.target_report(rows), ".3g"))
    return _write_results("families", params, rows, device, args)


def _add_book_commands(commands: argparse._SubParsersAction) -> None:
    from .book.runner import DEVICES, EXECUTED_DIR, MODES

    run = commands.add_parser(
        "run", help="execute notebooks with papermill, stamped with device, mode, date and commit",
        description="Execute the book's notebooks (default: every notebooks/NN_topic.ipynb, in order). The "
                    f"executed copies go to {EXECUTED_DIR.relative_to(EXECUTED_DIR.parents[1])}/ unless --in-place.")
    run.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="notebooks to run (default: all)")
    run.add_argument("--device", choices=DEVICES, default="auto", help="(default: auto: cuda if available)")
    run.add_argument("--mode", choices=MODES, default="auto", help="auto: full on a GPU, quick on a CPU")
    run.add_argument("--seed", type=_int_at_least(0), default=0, help="(default: 0)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--output-dir", help="where the executed copies go (default: _build/executed)")
    where.add_argument("--in-place", action="store_true",
                       help="replace the committed notebooks (the reference run), after all of them ran")
    run.add_argument("--force", action="store_true", help="with --in-place: let a quick run replace a full one")
    run.set_defaults(handler=_run, command_parser=run)

    book = commands.add_parser(
        "book", help="build the website with Jupyter Book from executed notebooks",
        description="Stage the book with the notebooks of --notebooks and build _build/html (warnings are "
                    "errors), with the slides under _build/html/slides.")
    book.add_argument("--notebooks", default=str(EXECUTED_DIR),
                      help="folder of executed notebooks: _build/executed (make book) or notebooks (make site)")
    book.add_argument("--build-dir", default=None, help="(default: _build)")
    book.set_defaults(handler=_book, command_parser=book)

    slides = commands.add_parser("slides", help="reveal.js decks from the cells marked for slides",
                                 description="One reveal.js deck per notebook, with its assets, for offline use.")
    slides.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="(default: every committed notebook)")
    slides.add_argument("--output-dir", default="_build/html/slides", help="(default: _build/html/slides)")
    slides.set_defaults(handler=_slides, command_parser=slides)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .book.runner import NotebookError, find_notebooks, run_notebooks

    if args.force and not args.in_place:
        parser.error("--force: expected together with --in-place, got it alone")
    with _fails_on(NotebookError, ValueError):
        notebooks = args.notebooks or find_notebooks()
        runs = run_notebooks(notebooks, device=args.device, mode=args.mode, seed=args.seed,
                             output_dir=args.output_dir, in_place=args.in_place, force=args.force)
    print(f"ran {len(runs)} notebook(s) in {sum(run.seconds for run in runs):.1f} s")
    return 0


def _book(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .book.paths import BUILD_DIR
    from .book.site import BookBuildError, build_site
    from .book.runner import NotebookError
    from .book.web_assets import MissingAssetsError

    with _fails_on(BookBuildError, MissingAssetsError, NotebookError, OutputDirError):
        index = build_site(args.notebooks, build_dir=args.build_dir or BUILD_DIR)
    print(f"built the site: open {index} (or: python -m http.server -d {index.parent})")
    return 0


def _slides(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .book.runner import find_notebooks
    from .book.slides import write_decks
    from .book.web_assets import MissingAssetsError

    with _fails_on(MissingAssetsError, ValueError, FileNotFoundError):
        decks = write_decks(args.notebooks or find_notebooks(), args.output_dir)
    for deck in decks:
        print(f"wrote {deck}")
    return 0


_KERNEL_FLAGS = {"batches": "--batch", "widths": "--width", "grids": "--grid", "dtypes": "--dtype"}


def _add_bench_kernel(benchmarks: argparse._SubParsersAction) -> None:
    parser = benchmarks.add_parser(
        "kernel",
        help="the fused Triton kernel against the torch path, unfused layers, pykan, MLPs and the dense floor",
        description="Time forward and forward+backward and measure peak training memory of "
                    f"{', '.join(kernel.CANDIDATES)} for every dtype, batch, width (I = O) and grid size; print "
                    "a table and the targets, and write data/results/kernel-*.json. The Triton candidates need "
                    "CUDA: on the CPU they are reported missing (or run under TRITON_INTERPRET=1, for checks).",
    )
    sizes = (("batches", "B", "batch size(s)"), ("widths", "W", "in and out features I = O"),
             ("grids", "G", "grid size(s)"))
    for dest, metavar, text in sizes:
        flag = _KERNEL_FLAGS[dest]
        default = " ".join(map(str, kernel.DEFAULTS[dest]))
        parser.add_argument(flag, type=_int_at_least(1), nargs="+", action="extend", dest=dest, metavar=metavar,
                            help=f"{text}; repeat or list several (default: {default})")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), nargs="+", action="extend",
                        dest="dtypes", help=f"(default: {' '.join(kernel.DEFAULTS['dtypes'])})")
    _add_run_options(parser)
    parser.set_defaults(handler=_bench_kernel, command_parser=parser)


def _bench_kernel(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    device = _benchmark_device(args, parser)
    chosen = {name: getattr(args, name) or list(kernel.DEFAULTS[name]) for name in kernel.DEFAULTS}
    for name, values in chosen.items():
        _require_distinct(parser, _KERNEL_FLAGS[name], values)
    params = {**chosen, "order": args.order, "repeat": args.repeat, "warmup": args.warmup, "seed": args.seed,
              "skip_pykan": args.skip_pykan}
    rows = kernel.run_kernel_benchmark(device, chosen["batches"], chosen["widths"], chosen["grids"],
                                       [DTYPES[name] for name in chosen["dtypes"]], order=args.order,
                                       repeat=args.repeat, warmup=args.warmup, skip_pykan=args.skip_pykan,
                                       seed=args.seed)
    print(f"kernel benchmark on {device}, order {args.order}")
    print(format_table(rows, [column for column in kernel.TABLE_COLUMNS if any(column in row for row in rows)]))
    print("targets (set for an H100; bfloat16, B=4096, I=O=1024, G=5):")
    print(format_targets(kernel.target_report(rows), ".2f"))
    return _write_results("kernel", params, rows, device, args)


def _add_bench_quant(benchmarks: argparse._SubParsersAction) -> None:
    parser = benchmarks.add_parser(
        "quant",
        help="quantization: accuracy against bits, size, BitOps, lookup-table inference and QAT training time",
        description="Train float KANs on a symbolic formula and on digits, quantize them over bits x granularity x "
                    "calibration x table bits (and with QAT), time the lookup-table layer against the float layer "
                    "and training steps against an MLP; print the tables and targets and write "
                    "data/results/quant-*.json.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer settings, smaller layer, shorter training")
    parser.add_argument("--bits", type=_int_at_least(2), nargs="+", metavar="B",
                        help="weight bits to sweep, each in 2..8 (default: 8 4 3 2)")
    parser.add_argument("--train-steps", type=_int_at_least(1), default=None, metavar="N",
                        help="steps of each float training (default: 400, quick 120)")
    parser.add_argument("--qat-steps", type=_int_at_least(1), default=None, metavar="N",
                        help="steps of each quantization-aware fine-tuning (default: 200, quick 40)")
    _add_common_options(parser)
    parser.set_defaults(handler=_bench_quant, command_parser=parser)


def _given(settings: dict) -> dict:
    """The settings a command line gave (tuples of the values repeated, None or empty where not given)."""
    return {name: value for name, value in settings.items() if value}


def _print_tables_by_kind(rows: list[dict], kinds: Sequence[str], columns: Sequence[str]) -> None:
    """One table per kind of row, with the columns that any of its rows fills."""
    for kind in kinds:
        chosen = [row for row in rows if row["kind"] == kind]
        print(format_table(chosen, [c for c in columns if any(row.get(c) is not None for row in chosen)]))


def _study_params(args: argparse.Namespace, module, overrides: dict) -> dict:
    """What a study's results record of its run (a benchmark with --quick, its DEFAULTS and QUICK settings and
    overrides of them): the switches, the Triton autotuning setting and the settings used, tuples as lists."""
    from .ops.triton_tuning import AUTOTUNE_ENV

    settings = {**(module.QUICK if args.quick else module.DEFAULTS), **overrides}
    return {"quick": args.quick, "seed": args.seed, "repeat": args.repeat, "warmup": args.warmup,
            "triton_autotune": os.environ.get(AUTOTUNE_ENV, "all"),
            **{name: list(value) if isinstance(value, tuple) else value for name, value in settings.items()}}


def _bench_quant(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import quant

    device = _benchmark_device(args, parser)
    if args.bits and not all(2 <= bits <= 8 for bits in args.bits):
        parser.error(f"--bits: expected bit widths in 2..8, got {args.bits}")
    overrides = _given({"bits": tuple(args.bits or ()), "train_steps": args.train_steps,
                        "qat_steps": args.qat_steps})
    rows = quant.run_quant_benchmark(device, quick=args.quick, seed=args.seed, repeat=args.repeat,
                                     warmup=args.warmup, **overrides)
    print(f"quantization benchmark on {device}{' (quick)' if args.quick else ''}")
    _print_tables_by_kind(rows, ("accuracy", "inference", "training"), quant.TABLE_COLUMNS)
    print("targets:")
    print(format_targets(quant.target_report(rows), ".3g"))
    return _write_results("quant", _study_params(args, quant, overrides), rows, device, args)


def _add_bench_prune(benchmarks: argparse._SubParsersAction) -> None:
    parser = benchmarks.add_parser(
        "prune",
        help="pruning: accuracy and inference time against edge sparsity, masked, compacted and edge-sparse",
        description="Train KANs on digits and on pykan's Example 1, prune copies to each sparsity with "
                    "prune_to_sparsity (fine-tuned), time the dense model against the masked, compacted and "
                    "edge-sparse forms of each pruned one, and one layer with scattered masks against its "
                    "edge-sparse form; print the tables and targets and write data/results/prune-*.json.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer sparsities, smaller models, shorter training")
    parser.add_argument("--sparsity", type=float, nargs="+", dest="sparsities", metavar="S",
                        help="edge sparsities in [0, 1) (default: 0 0.5 0.75 0.9 0.95; quick: 0 0.5 0.9)")
    parser.add_argument("--train-steps", type=_int_at_least(1), default=None, metavar="N",
                        help="steps of the dense training (default: 400, quick 60)")
    parser.add_argument("--finetune-steps", type=_int_at_least(1), default=None, metavar="N",
                        help="steps of the fine-tuning after the last pruning round (default: 100, quick 20)")
    _add_common_options(parser)
    parser.set_defaults(handler=_bench_prune, command_parser=parser)


def _add_bench_images(benchmarks: argparse._SubParsersAction) -> None:
    parser = benchmarks.add_parser(
        "images",
        help="epoch time at equal test accuracy: the B-spline KAN against the MLP over hidden widths, on images",
        description="Train MLPs and B-spline KANs of one hidden layer at several widths and seeds on flattened "
                    "images, find each family's cheapest width reaching the same test accuracy, compare their "
                    "epoch times; print the tables and targets and write data/results/images-*.json.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer widths and epochs")
    parser.add_argument("--dataset", choices=("digits", "mnist", "fashion-mnist"), default="digits",
                        help="digits: scikit-learn's 8x8 digits (bundled); mnist, fashion-mnist: the IDX files "
                             "in --data-root (default: digits)")
    parser.add_argument("--data-root", default=None, help="the folder holding MNIST's or Fashion-MNIST's files")
    parser.add_argument("--seeds", type=_int_at_least(0), nargs="+", default=None, metavar="S",
                        help="model seeds, each width trained once per seed (default: 0 1 2)")
    parser.add_argument("--epochs", type=_int_at_least(1), default=None, help="(default: 10, quick 6)")
    _add_common_options(parser, repeated=False)
    parser.set_defaults(handler=_bench_images, command_parser=parser)


def _bench_images(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import images
    from .data import load_digits, load_mnist
    from .ops.triton_tuning import AUTOTUNE_ENV

    if args.dataset != "digits" and args.data_root is None:
        parser.error(f"--dataset {args.dataset}: expected --data-root, the folder holding its files, got none")
    _require_distinct(parser, "--seeds", args.seeds, "seeds")
    device = _benchmark_device(args, parser)
    settings = {**(images.QUICK if args.quick else images.DEFAULTS),
                **_given({"seeds": tuple(args.seeds or ()), "epochs": args.epochs})}
    if args.dataset == "digits":
        data = load_digits(seed=0)
    else:
        with _fails_on(FileNotFoundError, ValueError):
            data = load_mnist(args.data_root, variant="mnist" if args.dataset == "mnist" else "fashion")
    rows = images.run_images_benchmark(device, data, dataset=args.dataset, **settings)
    print(f"images benchmark on {device}, {args.dataset}{' (quick)' if args.quick else ''}: "
          f"{settings['epochs']} epochs of batch {settings['batch_size']}, seeds {list(settings['seeds'])}")
    print(format_table([row for row in rows if row["kind"] == "width"], images.TABLE_COLUMNS))
    summary = next(row for row in rows if row["kind"] == "summary")
    print(f"accuracy level {summary['accuracy_level']:.4f}: MLP width {summary['mlp_width']}, "
          f"B-spline KAN width {summary['bspline_width']}; trained again, their steps in turn: epochs of "
          f"{summary['mlp_epoch_seconds']:.4g} s and {summary['bspline_epoch_seconds']:.4g} s")
    print("targets:")
    print(format_targets(images.target_report(rows), ".3g"))
    params = {"quick": args.quick, "dataset": args.dataset, "triton_autotune": os.environ.get(AUTOTUNE_ENV, "all"),
              **{name: ({family: list(widths) for family, widths in value.items()} if name == "widths"
                        else list(value) if isinstance(value, tuple) else value)
                 for name, value in settings.items()}}
    return _write_results("images", params, rows, device, args)


def _bench_prune(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import prune

    device = _benchmark_device(args, parser)
    if args.sparsities is not None:
        bad = [value for value in args.sparsities if not 0.0 <= value < 1.0]
        if bad or len(set(args.sparsities)) != len(args.sparsities):
            parser.error(f"--sparsity: expected distinct fractions in [0, 1), got {args.sparsities}")
    overrides = _given({"sparsities": tuple(args.sparsities or ()), "train_steps": args.train_steps,
                        "finetune_steps": args.finetune_steps})
    rows = prune.run_prune_benchmark(device, quick=args.quick, seed=args.seed, repeat=args.repeat,
                                     warmup=args.warmup, **overrides)
    print(f"pruning benchmark on {device}{' (quick)' if args.quick else ''}")
    _print_tables_by_kind(rows, ("model", "layer"), prune.TABLE_COLUMNS)
    print("targets:")
    print(format_targets(prune.target_report(rows), ".3g"))
    return _write_results("prune", _study_params(args, prune, overrides), rows, device, args)


def _add_bench_threads(benchmarks: argparse._SubParsersAction) -> None:
    from .bench.threads import CONFIGURATIONS

    parser = benchmarks.add_parser(
        "threads",
        help="the layer's training step with default thread settings against explicit ones, alone and beside a "
             "busy process",
        description="Time one B-spline layer's forward+backward (CPU) in a fresh process per configuration "
                    f"({', '.join(CONFIGURATIONS)}), alone and beside a process that keeps every core busy; "
                    "print the table and targets and write data/results/threads-*.json.",
    )
    _add_shape_options(parser, "grid sizes; repeat or list several (default: 5 50: the dense and the local-support "
                               "kernels)")
    parser.add_argument("--rounds", type=_int_at_least(1), default=3,
                        help="turns each configuration takes, in rotation, each in a new process timing its share of "
                             "--repeat (default: 3)")
    _add_common_options(parser)
    parser.set_defaults(handler=_bench_threads, command_parser=parser)


def _bench_threads(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import threads

    device = _benchmark_device(args, parser)
    if device.type != "cpu":
        parser.error(f"--device: the thread benchmark measures the CPU kernels, got {device}")
    grids = args.grids or [5, 50]
    _require_distinct(parser, "--grid", grids, "grid sizes")
    rows = threads.run_threads_benchmark(grids, batch=args.batch, width=args.width, repeat=args.repeat,
                                         warmup=args.warmup, seed=args.seed, rounds=args.rounds)
    print(f"thread benchmark on {device}: batch {args.batch}, width {args.width}")
    print(format_table(rows, threads.TABLE_COLUMNS))
    print("targets:")
    print(format_targets(threads.target_report(rows), ".3g"))
    spread = threads.twin_spread(rows)
    if spread is not None:
        print(f"run-to-run noise alone: the default and the settings that change nothing here differ by up to "
              f"{spread:.3g}x")
    params = {"grids": grids, "batch": args.batch, "width": args.width, "repeat": args.repeat,
              "warmup": args.warmup, "seed": args.seed, "rounds": args.rounds}
    return _write_results("threads", params, rows, device, args)


def _add_bench_workflow(benchmarks: argparse._SubParsersAction) -> None:
    parser = benchmarks.add_parser(
        "workflow",
        help="pykan's Example 1 (fit, refine, fit, ...) over model seeds, kanlib and pykan side by side",
        description="Train pykan's Example 1, f(x, y) = exp(sin(pi x) + y^2) with a [2, 1, 1] KAN, as pykan's "
                    "tutorial does (LBFGS with each library's fit defaults, then refine and fit again per grid "
                    "size), with kanlib and with pykan on the same data; print the test RMSE and seconds per "
                    "seed and stage, the targets, and write data/results/workflow-*.json.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                        help="auto: cuda if available, else cpu (default: cpu)")
    parser.add_argument("--seeds", type=_int_at_least(0), nargs="+", metavar="S",
                        help="model seeds (default: 0 to 9; quick: 0 1)")
    parser.add_argument("--grid", type=_int_at_least(1), nargs="+", dest="grids", metavar="G",
                        help="grid sizes, the first at construction (default: 3 10 20; quick: 3 10)")
    parser.add_argument("--steps", type=_int_at_least(1), default=None,
                        help="LBFGS steps per grid size (default: 200; quick: 20)")
    parser.add_argument("--quick", action="store_true", help="two seeds, two grid sizes, 20 steps each")
    parser.add_argument("--out-dir", default=RESULTS_DIR, help=f"where the JSON goes (default: {RESULTS_DIR})")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    parser.set_defaults(handler=_bench_workflow, command_parser=parser)


def _bench_workflow(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench import workflow

    device = _device(args, parser)
    _require_distinct(parser, "--seeds", args.seeds, "seeds")
    _check_out_dir(args)
    settings = workflow.QUICK if args.quick else workflow.DEFAULTS
    seeds = tuple(args.seeds or settings["seeds"])
    grids = tuple(args.grids or settings["grids"])
    steps = args.steps or settings["steps"]
    rows = workflow.run_workflow_benchmark(device, seeds=seeds, grids=grids, steps=steps)
    print(f"workflow benchmark (pykan's Example 1) on {device}{' (quick)' if args.quick else ''}")
    print(format_table([row for row in rows if row["kind"] == "seed"], workflow.table_columns(grids)))
    print(format_table([row for row in rows if row["kind"] == "summary"]))
    print("targets:")
    print(format_targets(workflow.target_report(rows), ".3g"))
    params = {"quick": args.quick, "seeds": list(seeds), "grids": list(grids), "steps": steps,
              "dataset_seed": workflow.DATASET_SEED, "rmse_goal": workflow.RMSE_GOAL,
              "pykan": {"auto_save": False, "ckpt_path": "a temporary folder, removed after the run"}}
    return _write_results("workflow", params, rows, device, args)


def _add_profile_command(commands: argparse._SubParsersAction) -> None:
    profile = commands.add_parser(
        "profile", help="where one B-spline KAN layer's time goes: host clock and torch.profiler tables",
        description="Run the layer benchmark's bsplinekan layer (I = O = width) forward, then forward + backward: "
                    "print the time to issue each call beside the time to finish it, then torch.profiler's "
                    "operator tables (on a GPU also by device time). Writes nothing.")
    _add_shape_options(profile, "grid size (default: 5)")
    profile.add_argument("--order", type=_int_at_least(1), default=3, help="spline order k (default: 3)")
    profile.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="(default: float32)")
    profile.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                         help="auto: cuda if available, else cpu (default: auto)")
    profile.add_argument("--calls", type=_int_at_least(1), default=20, help="calls timed and profiled (default: 20)")
    profile.add_argument("--rows", type=_int_at_least(1), default=25, help="rows of each table (default: 25)")
    profile.add_argument("--compile", choices=("none", "default", "reduce-overhead"), default="none",
                         help="run the layer under torch.compile in this mode (reduce-overhead: CUDA graphs on a "
                              "GPU); none: as it is (default: none)")
    profile.set_defaults(handler=_profile, command_parser=profile)


def _profile(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .bench.profile import profile_layer

    grids = args.grids or [5]
    if len(grids) != 1:
        parser.error(f"--grid: expected one grid size, got {grids}")
    device = _device(args, parser)
    result = profile_layer(device, args.batch, args.width, grids[0], args.order, DTYPES[args.dtype],
                           calls=args.calls, rows=args.rows, compile_mode=args.compile)
    print(result.format())
    return 0


def _add_gpu_commands(commands: argparse._SubParsersAction) -> None:
    wheels = commands.add_parser(
        "gpu-wheels", help="download the wheels a bare GPU machine lacks into .whl/ (needs the package registries)",
        description="Download the Python 3.12 manylinux wheels of pykan, papermill, nbformat, nbclient, ipykernel "
                    "and what they need beyond the GPU image, and a wheel of kanlib, into .whl/; check that the "
                    "tree and the wheels fit the 64 MiB a lent GPU machine receives.")
    wheels.set_defaults(handler=_gpu_wheels, command_parser=wheels)
    reference = commands.add_parser(
        "gpu-reference", help="the GPU reference run: CUDA tests and benchmarks, in one budget",
        description="Run the CUDA tests, then bench layer, profile, bench prune, bench kernel, bench images, "
                    "bench families, the basis families' tests and bench quant on cuda, each under its own timeout "
                    "within --deadline seconds; pack the new results, the log and a summary into --out.")
    reference.add_argument("--out", default=os.environ.get("OUT") or "_build/gpu-reference",
                           help="where the packed files go (default: $OUT, else _build/gpu-reference)")
    reference.add_argument("--deadline", type=_int_at_least(60), default=None,
                           help="seconds for the whole run (default: 540)")
    reference.add_argument("--rehearse", action="store_true",
                           help="the same steps on the CPU with tiny sizes (Triton under its interpreter)")
    reference.add_argument("--wheels", default=None, metavar="FOLDER",
                           help="install these wheels (make gpu-wheels) for the steps first (default: .whl when it "
                                "holds wheels and the run is not a rehearsal)")
    reference.set_defaults(handler=_gpu_reference, command_parser=reference)
    imports = commands.add_parser(
        "gpu-import", help="put a GPU run's results into data/results",
        description="Unpack what gpu-reference packed into data/results/, refusing files that were not measured "
                    "on cuda.")
    imports.add_argument("folder", help="the folder holding results.tar.gz")
    imports.set_defaults(handler=_gpu_import, command_parser=imports)


def _gpu_wheels(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .book.gpu import download_wheels

    with _fails_on(RuntimeError):
        wheels = download_wheels()
    print(f"{len(wheels)} wheel(s) in {wheels[0].parent if wheels else '.whl'}: "
          + ", ".join(wheel.name.split("-")[0] for wheel in wheels))
    return 0


def _gpu_reference(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .book.gpu import DEADLINE_S, WHEEL_DIR, run_reference

    if not args.rehearse and not _cuda_available():
        parser.error("expected a CUDA device for the GPU reference run, got none; --rehearse runs it on the CPU")
    wheels = args.wheels
    if wheels is None and not args.rehearse and any(WHEEL_DIR.glob("*.whl")):
        wheels = WHEEL_DIR
    if wheels is not None and not any(pathlib.Path(wheels).glob("*.whl")):
        parser.error(f"--wheels: expected a folder of .whl files, got {wheels}")
    with _fails_on(OutputDirError):
        summary = run_reference(args.out, rehearse=args.rehearse, deadline_s=args.deadline or DEADLINE_S,
                                wheels=wheels)
    return 0 if all(record["status"] == "passed" for record in summary["steps"]) else 1


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_import(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .book.gpu import GPUImportError, import_reference

    with _fails_on(GPUImportError, OSError):
        written = import_reference(args.folder)
    for path in written:
        print(f"wrote {path}")
    print("the chapters with GPU figures read them when executed again: python -m kanlib run "
          "notebooks/04_triton_kernels.ipynb notebooks/06_kans_on_images.ipynb "
          "notebooks/09_pruning_and_sparsity.ipynb notebooks/90_findings.ipynb --in-place (06 and 09 with --mode "
          "full to keep their committed mode)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # The usage lines name the command as typed: the console script, else the module (python -m, tests).
    prog = "kanlib" if pathlib.Path(sys.argv[0]).name == "kanlib" else "python -m kanlib"
    parser = argparse.ArgumentParser(prog=prog, description="Fast, exact KAN layers: benchmarks and tools.")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    bench = commands.add_parser("bench", help="run a benchmark, print its table and write its results",
                                description="Run a benchmark, print its table and write its results.")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="benchmark", required=True)
    _add_bench_layer(benchmarks)
    _add_bench_families(benchmarks)
    _add_bench_kernel(benchmarks)
    _add_bench_quant(benchmarks)
    _add_bench_workflow(benchmarks)
    _add_bench_threads(benchmarks)
    _add_bench_prune(benchmarks)
    _add_bench_images(benchmarks)
    _add_book_commands(commands)
    _add_profile_command(commands)
    _add_gpu_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the chosen command and return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args, args.command_parser)
    except _CommandFailed as failure:
        print(f"kanlib {args.command}: {failure.__cause__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
