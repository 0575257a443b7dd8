"""The `fastrnn` command (also `python -m fastrnn`)."""
from __future__ import annotations

import argparse
import json
import sys

from .train_cli import add_commands as add_train_commands


def _shape_list(text):
    """'100x1x128x128,50x32x256x256' -> [[100, 1, 128, 128], [50, 32, 256, 256]]"""
    try:
        shapes = [[int(v) for v in part.lower().split("x")] for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected shapes like 100x1x128x128,50x32x256x256, got {text!r}")
    if not shapes or any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"each shape is TxBxIxH with positive sizes, got {text!r}")
    return shapes


def _cells(text):
    cells = [c.strip().lower() for c in text.split(",") if c.strip()]
    bad = [c for c in cells if c not in ("rnn", "gru", "lstm")]
    if bad or not cells:
        raise argparse.ArgumentTypeError(f"cells are rnn, gru, lstm; got {text!r}")
    return cells


def cmd_bench(args) -> int:
    from . import benchmark
    sections = ("recurrent", "cell_step", "sdpa")
    if args.only:
        sections = tuple(args.only.split(","))
    result = benchmark.run(cells=args.cells, shapes=args.shapes, threads=args.threads, dtype=args.dtype,
                           include_reference=not args.no_reference, include_torch=not args.no_torch,
                           budget=args.budget, progress=not args.quiet, sections=sections)
    print(benchmark.format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"raw rows written to {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(benchmark.format_markdown(result))
        print(f"markdown table written to {args.markdown}")
    if args.plot:
        benchmark.plot(result, args.plot)
        print(f"chart written to {args.plot}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastrnn", description="fast RNN/LSTM/GRU and attention for NumPy")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="time fastrnn against the NumPy reference and PyTorch (if installed)")
    b.add_argument("--cells", type=_cells, help="comma-separated: rnn,gru,lstm (default: all)")
    b.add_argument("--shapes", type=_shape_list, help="recurrent shapes TxBxIxH, comma-separated (default: the grid)")
    b.add_argument("--threads", type=int, help="thread count for fastrnn and PyTorch (default: fastrnn's)")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    b.add_argument("--only", help="comma-separated sections: recurrent,cell_step,sdpa (default: all)")
    b.add_argument("--budget", type=float, default=0.6, help="seconds of timing per row and backend set (default 0.6)")
    b.add_argument("--json", metavar="FILE", help="write the raw rows as JSON")
    b.add_argument("--markdown", metavar="FILE.md", help="write the table as Markdown (as in the README)")
    b.add_argument("--plot", metavar="FILE.png", help="write a chart of the speedups (needs matplotlib)")
    b.add_argument("--no-reference", action="store_true", help="skip the NumPy reference")
    b.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)
    add_train_commands(sub)  # train charlm|seq2seq, generate, translate
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        print("fastrnn: --threads must be >= 1", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
