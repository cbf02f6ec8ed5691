"""The mutation score's record (bench/mutation.py): mutmut's results written to the repository
and read back into a fresh `mutants/` give the same counts, as mutmut itself reads them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation", REPO / "bench" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "WORK", tmp_path)
    monkeypatch.setattr(module, "RECORD", tmp_path / "record.json")
    monkeypatch.setattr(module, "REASONS", tmp_path / "reasons.toml")
    monkeypatch.setattr(module, "modules", lambda: ["kubeplat/pki.py", "kubeplat/node/etcd.py"])
    return module


def test_the_record_round_trips_into_a_fresh_mutants_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mutation = bench(tmp_path, monkeypatch)
    meta = {
        "exit_code_by_key": {
            "kubeplat.pki.x_ensure__mutmut_1": 1,
            "kubeplat.pki.x_ensure__mutmut_2": 0,
            "kubeplat.pki.x_ensure__mutmut_4": None,
            "kubeplat.pki.xǁResultǁchanged__mutmut_1": 33,
            "kubeplat.pki.x_ensure__mutmut_3": 36,
        },
        "hash_by_function_name": {"x_ensure": "aaa", "xǁResultǁchanged": "bbb"},
        "type_check_error_by_key": {},
        "durations_by_key": {"kubeplat.pki.x_ensure__mutmut_1": 0.1},
        "estimated_durations_by_key": {},
    }
    (tmp_path / "operator" / "mutants" / "kubeplat").mkdir(parents=True)
    (tmp_path / "operator" / "mutants" / "kubeplat" / "pki.py.meta").write_text(json.dumps(meta))
    mutation.save_record()
    record = json.loads((tmp_path / "record.json").read_text())
    assert record == {
        "kubeplat/pki.py": {
            "x_ensure": ["aaa", [1, 0, 36, None]],
            "xǁResultǁchanged": ["bbb", [33]],
        }
    }
    counts = mutation.tally("kubeplat/pki.py")
    assert (counts["killed"], counts["survived"], counts["no_tests"]) == (2, 1, 1)
    assert mutation.survivors() == [
        "kubeplat.pki.x_ensure__mutmut_2", "kubeplat.pki.xǁResultǁchanged__mutmut_1"
    ]  # fmt: skip
    (tmp_path / "reasons.toml").write_text(
        '"kubeplat.pki.x_ensure__mutmut_2" = "equivalent: the order is sorted later"\n'
    )
    monkeypatch.setattr("sys.argv", ["mutation.py", "--no-run", "--list"])
    assert mutation.main() == 0
    assert capsys.readouterr().out.splitlines() == [
        "kubeplat.pki.x_ensure__mutmut_2  equivalent: the order is sorted later",
        "kubeplat.pki.xǁResultǁchanged__mutmut_1  (no reason recorded: kill it or give one)",
    ]
    # A fresh clone: no mutants/ at all. The seed gives mutmut the same results back.
    (tmp_path / "operator" / "mutants" / "kubeplat" / "pki.py.meta").unlink()
    mutation.seed()
    seeded = json.loads(
        (tmp_path / "operator" / "mutants" / "kubeplat" / "pki.py.meta").read_text()
    )
    assert seeded["exit_code_by_key"] == meta["exit_code_by_key"]
    assert seeded["hash_by_function_name"] == meta["hash_by_function_name"]
    assert mutation.tally("kubeplat/pki.py") == counts
    # mutmut's own reading of it (mutmut.mutation.data), as it loads a module's results.
    from mutmut.mutation.data import SourceFileMutationData

    monkeypatch.chdir(tmp_path / "operator")
    data = SourceFileMutationData(path="kubeplat/pki.py")
    data.load()
    assert data.exit_code_by_key == meta["exit_code_by_key"]
    # Results mutmut has already (a run in progress) are never overwritten by the record.
    (tmp_path / "operator" / "mutants" / "kubeplat" / "pki.py.meta").write_text(
        json.dumps({**meta, "exit_code_by_key": {}})
    )
    mutation.seed()
    assert (
        json.loads((tmp_path / "operator" / "mutants" / "kubeplat" / "pki.py.meta").read_text())[
            "exit_code_by_key"
        ]
        == {}
    )


def test_only_names_modules_the_configuration_mutates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mutation = bench(tmp_path, monkeypatch)
    monkeypatch.setattr("sys.argv", ["mutation.py", "--only", "kubeplat/cli.py"])
    with pytest.raises(SystemExit):
        mutation.main()
    assert "--only kubeplat/cli.py: not a module [tool.mutmut] only_mutate names" in (
        capsys.readouterr().err
    )
    assert mutation.mutant_pattern("kubeplat/node/etcd.py") == "kubeplat.node.etcd.*"


def test_a_report_reads_the_record_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--no-run` on a fresh clone: the score from the record alone, and no mutmut results
    written (seeded results without mutmut's mutants once made the next run fail with
    "Unable to force test failures")."""
    mutation = bench(tmp_path, monkeypatch)
    (tmp_path / "record.json").write_text(
        json.dumps({"kubeplat/pki.py": {"x_ensure": ["aaa", [1, 1, 1, 0, None]]}})
    )
    monkeypatch.setattr("sys.argv", ["mutation.py", "--no-run"])
    assert mutation.main() == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert rows["kubeplat/pki.py"] == ["3", "1", "0", "75.0%"]
    assert rows["all"] == ["3", "1", "0", "75.0%"]
    assert not (tmp_path / "operator").exists() and not (tmp_path / "node").exists()


def test_a_module_copied_plain_by_an_earlier_run_is_mutated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of other modules leaves mutmut a plain copy of this one, which mutmut keeps while
    its source is unchanged: every mutant would reach no test, and be recorded so (config.py
    and node/etcd.py were, 3,749 mutants). `prepare` removes such a copy so mutmut makes it
    again; a mutated copy is kept. Its stats go too: mutmut then
    traces every test again, where it would trace new tests only."""
    import shutil
    import subprocess

    mutation = bench(tmp_path, monkeypatch)
    source = tmp_path / "repository"  # a repository of its own: git lists what it copies
    (source / "kubeplat" / "node").mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", source / "pyproject.toml")
    (source / "kubeplat" / "node" / "etcd.py").write_text('"""the module"""\n')
    subprocess.run(["git", "init", "-q"], cwd=source, check=True)
    subprocess.run(["git", "add", "."], cwd=source, check=True)
    monkeypatch.setattr(mutation, "REPO", source)
    made = tmp_path / "node" / "mutants" / "kubeplat" / "node"
    made.mkdir(parents=True)
    (made / "etcd.py").write_text('"""plain, as an earlier run copied it"""\n')
    mutated = f"{mutation.TRAMPOLINE} wrap_in_trampoline as _mutmut_mutated, MutantDict\n"
    (made / "agent.py").write_text(mutated)
    stats = tmp_path / "node" / "mutants" / "mutmut-stats.json"
    stats.write_text("{}")  # which tests reach which function, as an older run traced it
    copy = mutation.prepare("node", ["kubeplat/node/etcd.py", "kubeplat/node/agent.py"])
    assert copy == tmp_path / "node"
    assert not (made / "etcd.py").exists()
    assert (made / "agent.py").read_text() == mutated
    assert not stats.exists()  # mutmut traces every test again
    assert (copy / "kubeplat" / "node" / "etcd.py").read_text() == '"""the module"""\n'
    pyproject = (copy / "pyproject.toml").read_text()
    assert (
        'only_mutate = [\n  "kubeplat/node/etcd.py",\n  "kubeplat/node/agent.py",\n]' in pyproject
    )


def test_tests_are_only_for_checking_survivors_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mutation = bench(tmp_path, monkeypatch)
    monkeypatch.setattr("sys.argv", ["mutation.py", "--tests", "tests/unit/test_pki.py"])
    with pytest.raises(SystemExit):
        mutation.main()
    assert "--tests checks the survivors again: use it with --survivors" in capsys.readouterr().err
    monkeypatch.setattr(
        "sys.argv", ["mutation.py", "--survivors", "--tests", "tests/unit/test_nothing_here.py"]
    )
    with pytest.raises(SystemExit, match=r"--tests tests/unit/test_nothing_here\.py: no such file"):
        mutation.main()


def test_a_quick_check_counts_a_failed_test_or_a_timeout_as_a_kill() -> None:
    import subprocess

    spec = importlib.util.spec_from_file_location("mutation", REPO / "bench" / "mutation.py")
    assert spec is not None and spec.loader is not None
    mutation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mutation)

    def ran(code: int) -> subprocess.CompletedProcess[bytes]:
        return subprocess.CompletedProcess([], code, stdout=b"collected 0 items", stderr=b"")

    assert mutation._exit_code(ran(1)) == 1  # a test failed
    assert mutation._exit_code(None) == 36  # it ran out of time
    assert mutation._exit_code(ran(0)) is None  # every test passed: it survives
    assert mutation._exit_code(ran(5)) is None  # no test reached it
    with pytest.raises(RuntimeError, match="pytest exited 4: collected 0 items"):
        mutation._exit_code(ran(4))  # a wrong test path: no result at all
