"""The command line shared by the scripts that write a generated docs page (bench_report.py, gen_config_doc.py):
write the page, or with --check only say whether the committed page is current (exit 1 if not)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def main(description: str | None, page: Path, fresh: Callable[[], str], *, source: str, script: str) -> int:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only say whether the page is current (exit 1 if not)")
    args = parser.parse_args()
    text = fresh()
    if not args.check:
        page.write_text(text)
        return 0
    if page.is_file() and page.read_text() == text:
        return 0
    print(f"docs/{page.name} is not what {source} gives: run python scripts/{script}", file=sys.stderr)
    return 1
