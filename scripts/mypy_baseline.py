"""Type-check with mypy (configuration: pyproject.toml ``[tool.mypy]``) against a baseline that
can only shrink (architecture.md habit 16).

``mypy-baseline.txt`` holds the number of mypy errors per file. The run fails when a file has
more errors than its line there, or a file that is not listed has any (so a new module, and the
strict modules that are not listed, must be clean). When a file has fewer, the run passes and
asks for the smaller number to be written back: ``python scripts/mypy_baseline.py --update``
(which refuses to raise any number once the file exists). The cache lives in .venv
(``cache_dir``): a warm run takes about a second.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "mypy-baseline.txt"
ERROR = re.compile(r"^(?P<path>[^:\s]+\.py):\d+: error: ", re.M)
HEADER = ("# mypy errors per file (scripts/mypy_baseline.py): numbers may only go down; a file not\n"
          "# listed must have none.\n")


def count(output: str) -> Counter[str]:
    return Counter(m.group("path") for m in ERROR.finditer(output))


def read(text: str) -> dict[str, int]:
    baseline = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            number, path = line.split()
            baseline[path] = int(number)
    return baseline


def write(counts: dict[str, int]) -> str:
    return HEADER + "".join(f"{n:4d} {path}\n" for path, n in sorted(counts.items()) if n)


def compare(counts: dict[str, int], baseline: dict[str, int]) -> tuple[dict, dict]:
    """(grown, shrunk): file -> (baseline, now)."""
    grown = {p: (baseline.get(p, 0), n) for p, n in counts.items() if n > baseline.get(p, 0)}
    shrunk = {p: (b, counts.get(p, 0)) for p, b in baseline.items() if counts.get(p, 0) < b}
    return grown, shrunk


def main(argv: list[str]) -> int:
    from mypy import api

    stdout, stderr, status = api.run(["--no-error-summary", "--no-pretty"])
    if status not in (0, 1) or stderr:
        print(stdout + stderr, file=sys.stderr)
        return 2
    counts = count(stdout)
    baseline = read(BASELINE.read_text()) if BASELINE.exists() else {}
    grown, shrunk = compare(counts, baseline)
    for path, (before, now) in sorted(grown.items()):
        print(f"{path}: {now} mypy errors, the baseline allows {before}:")
        print("".join(line + "\n" for line in stdout.splitlines() if line.startswith(path + ":")))
    if "--update" in argv:
        if grown and BASELINE.exists():
            print("mypy baseline not updated: it may only shrink", file=sys.stderr)
            return 1
        BASELINE.write_text(write(counts))
        print(f"{BASELINE.name}: {sum(counts.values())} errors in {len(counts)} files")
        return 0
    for path, (before, now) in sorted(shrunk.items()):
        print(f"{path}: {now} mypy errors, baseline {before}: run scripts/mypy_baseline.py --update")
    print(f"mypy: {sum(counts.values())} errors in {len(counts)} files, none beyond the baseline"
          if not grown else "mypy: more errors than the baseline (above)")
    return 1 if grown else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
