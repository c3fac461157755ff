"""``segexp compare``: compare runs from their folders alone (no W&B needed).

    segexp compare multirun/2026-11-27/18-40-00         # one sweep
    segexp compare outputs --metric test/mIoU --top-k 5  # every run under outputs/
    segexp compare multirun/a multirun/b --html report.html  # several, one web page

The reading, table and plots are ``segexp.track.compare``; this is its command line.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from segexp.cli.errors import exit_codes


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``segexp compare`` (the docs test parses documented commands with it)."""
    parser = argparse.ArgumentParser(
        prog="segexp compare", description="Compare runs from their folders alone."
    )
    parser.add_argument(
        "roots",
        nargs="+",
        metavar="root",
        help="multirun sweep folders, outputs/, or any folders holding run folders",
    )
    parser.add_argument("--metric", default="val/mIoU", help="sort by this key of metrics.json")
    parser.add_argument("--mode", default="max", choices=("max", "min"))
    parser.add_argument("--top-k", type=int, default=3, help="learning curves of the best k runs")
    parser.add_argument(
        "--out",
        default=None,
        help="where to write the files (default: ROOT, or the folder holding all ROOTs)",
    )
    parser.add_argument(
        "--html", default=None, metavar="FILE", help="also write the comparison as one web page"
    )
    parser.add_argument(
        "--all-params", action="store_true", help="also the overrides every run shares"
    )
    parser.add_argument("--no-plots", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``segexp compare`` with ``argv`` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)

    with exit_codes():  # a missing or empty folder: one line and exit 2
        from segexp.track.compare import compare

        result = compare(
            args.roots,
            args.metric,
            args.mode,
            args.top_k,
            args.out,
            args.all_params,
            not args.no_plots,
            args.html,
        )
    print(result["markdown"])
    print("\nwrote: " + ", ".join(str(f) for f in result["files"]))
    return 0
