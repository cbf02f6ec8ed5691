"""Mutation score of the modules where a silent change would hurt users most.

    python bench/mutation.py [--json] [--max-children N] [--only PATH ...] [--survivors]
    python bench/mutation.py --survivors --tests TEST ... [--only PATH ...]
    python bench/mutation.py --no-run [--json] [--list]

Runs `mutmut run` over the modules `[tool.mutmut] only_mutate` names (pyproject.toml): mutmut
changes one thing at a time in them (a comparison, a constant, a condition, a return value) and
runs the unit tests that reach the changed function; a mutant the tests notice is killed. Then
prints, per module and in all, how many were killed and the score: killed / every mutant checked
(a mutant no test reaches counts against, as one that survives does).

A whole run takes hours (over 10,000 mutants), so it is done in parts and the results are kept
in the repository: bench/mutation-record.json holds each mutant's last result with the hash of
the function it changes. Before a run, mutmut's own results (`mutants/`, git-ignored) are seeded
from it, so only mutants of changed functions, and those never checked, run again; after it,
the record is written back. `--survivors` checks again every mutant the record has surviving
(after new tests). `--list` prints the survivors with the reason bench/mutation-survivors.toml
gives for keeping one (an equivalent mutant, a message only subprocess tests read).

`--survivors --tests TEST ...` is the quick way after adding tests: each survivor runs against
those tests alone (seconds, where mutmut runs every test that reaches its function, up to a
minute each). A survivor has already outlived every other test, so one these kill is killed, and
one they do not kill keeps its result. It needs mutmut's mutants of the module as the source is
now (a run of the module since its last change).

mutmut runs in two copies of the repository (`.mutation/operator`, `.mutation/node`,
git-ignored), each mutating one group: the node programs apart from the operator's modules. The
renderer embeds the node programs' source in every node's configuration, and mutated they are
fifty times their size: beside them, every rendering test would parse megabytes of YAML and run
fifteen times slower. `cd .mutation/GROUP && mutmut show NAME` shows a mutant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from fnmatch import fnmatch
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "bench" / "mutation-record.json"
REASONS = REPO / "bench" / "mutation-survivors.toml"
WORK = REPO / ".mutation"
# What every module mutmut has mutated imports (a plain copy has none of it).
TRAMPOLINE = "from mutmut.mutation.trampoline import"
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


def group_of(module: str) -> str:
    return "node" if module.startswith("kubeplat/node/") else "operator"


def _meta(module: str) -> Path:
    return WORK / group_of(module) / "mutants" / f"{module}.meta"


def prepare(group: str, mine: list[str]) -> Path:
    """The group's copy of the repository (the files git would commit, changed ones copied
    again with their times, so mutmut regenerates only what changed), its pyproject mutating
    only `mine`: mutmut then checks their mutants it has no result for, and no other."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    copy = WORK / group
    wanted = set()
    for name in filter(None, listed):
        source, target = REPO / name, copy / name
        if not source.is_file():
            continue
        wanted.add(target)
        if target.exists() and _same_file(source, target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    for old in [*copy.glob("kubeplat/**/*.py"), *copy.glob("tests/**/*.py")]:
        if old not in wanted:
            old.unlink()  # deleted from the repository since
    for module in mine:
        # A run that did not mutate this module left mutmut a plain copy of it, which mutmut
        # keeps while the source is unchanged: its mutants would then reach no test (and be
        # recorded so). Removed, mutmut makes it again, mutated.
        made = copy / "mutants" / module
        if made.exists() and TRAMPOLINE not in made.read_text():
            made.unlink()
    # mutmut traces again only the tests it has not seen: an older test that reaches a
    # function only since it or the function changed stays unmapped, and the function's
    # mutants survive untried by it (14 of terraform's did). Without its stats, mutmut traces
    # every test (minutes) and keeps its results.
    (copy / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    pyproject = (REPO / "pyproject.toml").read_text()
    only = "only_mutate = [\n" + "".join(f'  "{m}",\n' for m in mine) + "]"
    pyproject = re.sub(r"(?ms)^only_mutate = \[.*?^\]", lambda _: only, pyproject, count=1)
    target = copy / "pyproject.toml"
    if not target.exists() or target.read_text() != pyproject:
        target.write_text(pyproject)
    return copy


def _same_file(source: Path, target: Path) -> bool:
    mine, copied = source.stat(), target.stat()
    return (mine.st_mtime, mine.st_size) == (copied.st_mtime, copied.st_size)


def _prefix(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def seed() -> None:
    """mutmut's results of a module from the record, where mutants/ has none (a fresh clone):
    mutmut keeps a result while the hash of its function stays the same."""
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    for module, functions in record.items():
        meta = _meta(module)
        if meta.exists() or module not in modules():
            continue
        codes = _recorded(module)
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(
            json.dumps(
                {
                    "exit_code_by_key": codes,
                    "hash_by_function_name": {f: h for f, (h, _r) in functions.items()},
                    "type_check_error_by_key": {},
                    "durations_by_key": {},
                    "estimated_durations_by_key": {},
                }
            )
        )


def save_record() -> None:
    """The record from mutmut's results: per module, per function, its hash and each mutant's
    exit code in mutmut's order (null: not checked)."""
    record: dict[str, dict[str, list[Any]]] = {}
    for module in modules():
        meta = _meta(module)
        if not meta.exists():
            continue
        found = json.loads(meta.read_text())
        functions: dict[str, list[Any]] = {}
        for key, code in found["exit_code_by_key"].items():
            function, _, number = key.removeprefix(_prefix(module) + ".").rpartition("__mutmut_")
            results = functions.setdefault(
                function, [found["hash_by_function_name"].get(function, ""), []]
            )[1]
            results.extend([None] * (int(number) - len(results)))
            results[int(number) - 1] = code
        record[module] = dict(sorted(functions.items()))
    RECORD.write_text(json.dumps(record, indent=0, sort_keys=True, ensure_ascii=False) + "\n")


def _recorded(module: str) -> dict[str, int | None]:
    """Each mutant of one module → its exit code in the repository's record (None: never
    checked), read without writing anything (a report must not seed mutmut's results)."""
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    return {
        f"{_prefix(module)}.{function}__mutmut_{n}": code
        for function, (_hash, codes) in record.get(module, {}).items()
        for n, code in enumerate(codes, start=1)
    }


def results(module: str) -> dict[str, str]:
    """Each mutant of one module → how the score counts it (COUNTED_AS): from mutmut's results
    where a run left them, else from the repository's record."""
    from mutmut.stats import status_by_exit_code

    meta = _meta(module)
    if meta.exists():
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
    else:
        codes = _recorded(module)
    return {key: COUNTED_AS.get(status_by_exit_code[code], "other") for key, code in codes.items()}


def survivors() -> list[str]:
    """Every mutant the results have surviving or reached by no test."""
    return sorted(
        key
        for module in modules()
        for key, counted in results(module).items()
        if counted in ("survived", "no_tests")
    )


def reasons() -> dict[str, str]:
    return tomllib.loads(REASONS.read_text()) if REASONS.exists() else {}


def _exit_code(ran: subprocess.CompletedProcess[bytes] | None) -> int | None:
    """A quick check's result as mutmut records it: a test failed (1) or it timed out (36);
    None: it survived, its last result stands."""
    if ran is None:
        return 36
    if ran.returncode in (1, 3):
        return 1
    if ran.returncode in (0, 5):
        return None
    raise RuntimeError(
        f"pytest exited {ran.returncode}: {ran.stdout.decode(errors='replace')[-2000:]}"
    )


def _check_one(
    name: str, *, command: list[str], mutants: Path, timeout_s: float
) -> tuple[str, int | None]:
    environment = {**os.environ, "MUTANT_UNDER_TEST": name, "PYTHONPATH": str(mutants)}
    try:
        ran = subprocess.run(
            command, cwd=mutants, env=environment, capture_output=True,
            timeout=timeout_s, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return name, _exit_code(None)
    return name, _exit_code(ran)


def _generate(copy: Path, module: str) -> None:
    """mutmut's mutants of one module, made as `mutmut run` makes them, without running any
    test: again only when the source is newer than them (`prepare` removes a plain copy); the
    results of every function whose hash is unchanged are kept, a changed one's are not checked
    (a plain run checks them)."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from mutmut.__main__ import create_mutants_for_file\n"
        "found = create_mutants_for_file(Path(sys.argv[1]), Path('mutants') / sys.argv[1])\n"
        "if found.error: raise found.error\n"
    )
    (copy / "mutants" / module).parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", script, module], cwd=copy, check=True)


def recheck(modules_: list[str], tests: list[str], workers: int, timeout_s: float = 300.0) -> int:
    """Every survivor of these modules (and each one no test reached) run against `tests` alone,
    in mutmut's copy (`.mutation/GROUP/mutants`); a kill is written to mutmut's results and the
    record. Returns how many were killed."""
    from concurrent.futures import ThreadPoolExecutor

    missing = [t for t in tests if not (REPO / t.split("::")[0]).exists()]
    if missing:
        raise SystemExit(f"--tests {missing[0]}: no such file in the repository")
    killed = 0
    for group in sorted({group_of(m) for m in modules_}):
        mine = [m for m in modules_ if group_of(m) == group]
        copy = prepare(group, mine)
        mutants = copy / "mutants"
        for module in mine:
            _generate(copy, module)  # as mutmut does: only when the source is newer
        # The tests and every module mutmut did not mutate, as they are now.
        shutil.copytree(REPO / "tests", mutants / "tests", dirs_exist_ok=True)
        for source in (REPO / "kubeplat").rglob("*.py"):
            name = str(source.relative_to(REPO))
            if name in mine:
                continue
            target = mutants / name
            if not target.exists() or target.read_bytes() != source.read_bytes():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
        names = [n for n in survivors() if any(fnmatch(n, mutant_pattern(m)) for m in mine)]
        config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
        command = [
            sys.executable, "-m", "pytest", "-x", "-q", "--rootdir=.", "--tb=no",
            *config.get("pytest_add_cli_args", []), *tests,
        ]  # fmt: skip
        run = partial(_check_one, command=command, mutants=mutants, timeout_s=timeout_s)
        found: dict[str, int] = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for done, (name, code) in enumerate(pool.map(run, names), start=1):
                if code is not None:
                    found[name] = code
                print(f"\r{done}/{len(names)} checked, {len(found)} killed", end="", flush=True)
        print()
        for module in mine:
            meta = _meta(module)
            data = json.loads(meta.read_text())
            for name, code in found.items():
                if fnmatch(name, mutant_pattern(module)):
                    data["exit_code_by_key"][name] = code
            meta.write_text(json.dumps(data))
        killed += len(found)
    save_record()
    return killed


def tally(module: str) -> Counter[str]:
    """Killed / survived / no tests / skipped / other for one module, from mutmut's record."""
    return Counter(results(module).values())


def mutant_pattern(module: str) -> str:
    """mutmut's name pattern for every mutant of one module (kubeplat/pki.py: kubeplat.pki.*)."""
    return _prefix(module) + ".*"


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
    parser.add_argument(
        "--survivors", action="store_true", help="check again every mutant that survived"
    )
    parser.add_argument(
        "--tests", nargs="+", default=[], metavar="TEST",
        help="with --survivors: check them against these tests alone (after adding them)",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the survivors and reasons")
    args = parser.parse_args()
    unknown = sorted(set(args.only) - set(modules()))
    if unknown:
        parser.error(f"--only {unknown[0]}: not a module [tool.mutmut] only_mutate names")
    if args.tests and (not args.survivors or args.no_run):
        parser.error("--tests checks the survivors again: use it with --survivors")
    if args.tests:
        killed = recheck(args.only or modules(), args.tests, args.max_children)
        print(f"{killed} killed by {' '.join(args.tests)}")
    elif not args.no_run:
        seed()
        names: list[str] = []  # named mutants are checked again whatever their last result
        if args.survivors:
            names = survivors()
            if not names:
                print("no survivor to check again")
                return 0
        command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
        chosen = args.only or modules()
        for group in sorted({group_of(m) for m in chosen}):
            mine = [m for m in chosen if group_of(m) == group]
            again = [n for n in names if any(fnmatch(n, mutant_pattern(m)) for m in mine)]
            if args.survivors and not again:
                continue
            ran = subprocess.run([*command, *again], cwd=prepare(group, mine), check=False)
            save_record()
            if ran.returncode != 0:
                print(f"mutmut run failed in {group} (exit {ran.returncode})", file=sys.stderr)
                return ran.returncode
    if args.list:
        why = reasons()
        for name in survivors():
            print(f"{name}  {why.get(name, '(no reason recorded: kill it or give one)')}")
        return 0
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
