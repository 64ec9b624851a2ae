"""The stage-ablation table of the demo model, built from ``python -m training.evaluate`` result files.

    python -m recipes.demo.ablation_table "SFT only=OUT/eval_sft.json" "+ alignment=OUT/eval_align.json" \
        ... [--doc docs/demo_model.md]

Prints a Markdown table (one row per ``LABEL=RESULTS.json``, in the order given); with ``--doc`` it
also replaces the text between the ``<!-- ablation-table:begin -->`` and ``<!-- ablation-table:end -->``
markers of that file, so the documented numbers are the evaluator's, never typed by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

BEGIN, END = "<!-- ablation-table:begin -->", "<!-- ablation-table:end -->"
COLUMNS = (  # (header, metric key, shown as a percentage)
    ("gIoU", "gIoU", True),
    ("cIoU", "cIoU", True),
    ("box acc. (IoU ≥ 0.5)", "box_accuracy", True),
    ("box IoU", "box_iou", True),
    ("parse failures", "parse_failure_rate", True),
    ("tokens", "mean_generated_tokens", False),
    ("expressions", "num_expressions", False),
)


def cell(value: object, percent: bool) -> str:
    if value is None:
        return "–"
    if percent:
        return f"{100 * float(value):.1f}"
    return f"{value:.0f}" if isinstance(value, float) else str(value)


def markdown_table(rows: Sequence[tuple[str, dict]]) -> str:
    lines = ["| stage | " + " | ".join(h for h, _, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for label, metrics in rows:
        lines.append(f"| {label} | " + " | ".join(cell(metrics.get(key), pct) for _, key, pct in COLUMNS) + " |")
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no {BEGIN} ... {END} block")
    return text[: start + len(BEGIN)] + "\n" + table + "\n" + text[end:]


def parse_row(spec: str) -> tuple[str, dict]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=RESULTS.json, got {spec!r}")
    return label, json.loads(Path(path).read_text(encoding="utf-8"))["metrics"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.demo.ablation_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", type=parse_row, metavar="LABEL=RESULTS.json")
    parser.add_argument("--doc", type=Path, help="Markdown file whose marked block receives the table")
    args = parser.parse_args(argv)
    table = markdown_table(args.rows)
    print(table)
    if args.doc:
        args.doc.write_text(replace_block(args.doc.read_text(encoding="utf-8"), table), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
