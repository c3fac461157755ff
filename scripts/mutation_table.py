"""Per-module mutation score from ``mutmut results --all true`` (``make mutation`` prints it).

    python scripts/mutation_table.py segexp.model.metrics segexp.data.scan

Killed counts timeouts (the mutant made the tests hang); survived counts mutants no test
failed on and those no test reached; the score is killed / (mutants - not checked).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
NOT_RUN = {"not checked", "skipped", "check was interrupted by user"}


def statuses(mutmut: str = "mutmut") -> dict[str, str]:
    """{mutant name: status} of every mutant mutmut knows."""
    out = subprocess.run(
        [mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True
    ).stdout
    return dict(re.findall(r"^\s*(\S+): (.+?)\s*$", out, flags=re.MULTILINE))


def module_of(mutant: str) -> str:
    """``segexp.data.scan.x_bad_labels__mutmut_3`` -> ``segexp.data.scan``."""
    return re.split(r"\.x[_\u01c1]", mutant, maxsplit=1)[0]


def table(results: dict[str, str], modules: list[str]) -> list[str]:
    lines = [
        "| module | mutants | killed | survived | not run | score |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for module in modules:
        counts = Counter(s for m, s in results.items() if module_of(m) == module)
        total = sum(counts.values())
        killed = sum(n for s, n in counts.items() if s in KILLED)
        not_run = sum(n for s, n in counts.items() if s in NOT_RUN)
        survived = total - killed - not_run
        run = total - not_run
        score = f"{100 * killed / run:.1f} %" if run else "n/a"
        lines.append(f"| {module} | {total} | {killed} | {survived} | {not_run} | {score} |")
    return lines


def main(argv: list[str]) -> int:
    mutmut = str(Path(sys.executable).with_name("mutmut"))
    results = statuses(mutmut)
    modules = argv or sorted({module_of(m) for m in results})
    print("\n".join(table(results, modules)))
    for mutant, status in sorted(results.items()):
        if module_of(mutant) in modules and status not in KILLED | NOT_RUN:
            print(f"  {status}: {mutant}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
