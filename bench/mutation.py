"""Mutation score of the modules where a silent change would hurt users most.

    python bench/mutation.py [--json] [--max-children N] [--only PATH ...]

Runs `mutmut run` over the modules `[tool.mutmut] only_mutate` names (pyproject.toml): mutmut
changes one thing at a time in them (a comparison, a constant, a condition, a return value) and
runs the unit tests that reach the changed function; a mutant the tests notice is killed. Then
prints, per module and in all, how many were killed and the score: killed / every mutant checked
(a mutant no test reaches counts against, as one that survives does). Survivors are listed by
`mutmut results`; `mutmut show NAME` shows one. Results are kept in `mutants/` (git-ignored), so
a second run checks only what changed. Needs the dev extra; about an hour on two cores from
nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# mutmut's statuses of a mutant (mutmut.stats.status_by_exit_code), as this score counts them:
# a test failed, the run timed out or the type checker refused it: killed; skipped (`# pragma:
# no mutate`) and not yet checked: not counted.
COUNTED_AS = {
    "killed": "killed",
    "timeout": "killed",
    "caught by type check": "killed",
    "survived": "survived",
    "no tests": "no_tests",
    "skipped": "skipped",
    "not checked": "not_checked",
}


def modules() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def tally(module: str) -> Counter[str]:
    """Killed / survived / no tests / skipped / other for one module, from mutmut's record."""
    meta = REPO / "mutants" / f"{module}.meta"
    counts: Counter[str] = Counter()
    if not meta.exists():
        return counts
    from mutmut.stats import status_by_exit_code

    for code in json.loads(meta.read_text()).get("exit_code_by_key", {}).values():
        counts[COUNTED_AS.get(status_by_exit_code[code], "other")] += 1
    return counts


def mutant_pattern(module: str) -> str:
    """mutmut's name pattern for every mutant of one module (kubeplat/pki.py: kubeplat.pki.*)."""
    return module.removesuffix(".py").replace("/", ".") + ".*"


def score(counts: Counter[str]) -> float:
    checked = sum(n for k, n in counts.items() if k not in ("skipped", "not_checked"))
    return counts["killed"] / checked if checked else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--no-run", action="store_true", help="only report the last run")
    parser.add_argument(
        "--only", nargs="+", default=[], metavar="PATH",
        help="run only these modules' mutants (e.g. kubeplat/pki.py); the report shows all",
    )  # fmt: skip
    args = parser.parse_args()
    unknown = sorted(set(args.only) - set(modules()))
    if unknown:
        parser.error(f"--only {unknown[0]}: not a module [tool.mutmut] only_mutate names")
    if not args.no_run:
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
        ran = subprocess.run([*command, *map(mutant_pattern, args.only)], cwd=REPO, check=False)
        if ran.returncode != 0:
            print(f"mutmut run failed (exit {ran.returncode})", file=sys.stderr)
            return ran.returncode
    rows = {module: tally(module) for module in modules()}
    total: Counter[str] = Counter()
    for counts in rows.values():
        total.update(counts)
    if args.json:
        report = {m: {**c, "score": round(score(c), 4)} for m, c in rows.items()}
        report["all"] = {**total, "score": round(score(total), 4)}
        print(json.dumps(report, indent=1, sort_keys=True))
        return 0
    print(f"{'module':32} {'killed':>7} {'survived':>9} {'no tests':>9} {'score':>7}")
    for module, counts in [*rows.items(), ("all", total)]:
        print(
            f"{module:32} {counts['killed']:7d} {counts['survived']:9d} "
            f"{counts['no_tests']:9d} {score(counts):7.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
