"""Files from others read as hostile: a tabular benchmark (``rcnas.search.table``) and an evaluation store
(``rcnas.proxy.store``). Every bad file is one ConfigError line naming the file, read with bounded memory; no
schema object of someone else's survives opening a store."""

from __future__ import annotations

import gzip
import json
import math
import sqlite3
import tracemalloc
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from agents.config import task_path
from rcnas.infra.errors import ConfigError
from rcnas.proxy.records import TeacherStats
from rcnas.proxy.store import MAX_VALUE_BYTES, EvaluationStore, check_store
from rcnas.search.table import (
    MAX_HEADER_BYTES,
    MAX_TABLE_BYTES,
    Row,
    attack_column,
    every_subnet,
    read_table,
    table_task,
    write_table,
)
from rcnas.task import load_task

TABLE_TASKS = ["digits-pgd-e20-t444-r35", "digits-fgsm-e20-t444-r50", "digits-cw-e20-t444-r30"]
N_ROWS = 4


def one_line_error(exc: pytest.ExceptionInfo, path: Path, *fragments: str) -> str:
    message = str(exc.value)
    assert str(path) in message and "\n" not in message, message
    for f in fragments:
        assert f in message, message
    return message


# -- tables --------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tt():
    return table_task([load_task(task_path(t)) for t in TABLE_TASKS])


@pytest.fixture(scope="module")
def good_text(tt, tmp_path_factory) -> str:
    """A small well-formed table (its first sub-networks, made-up accuracies), as text."""
    from rcnas.infra.provenance import code_version
    from rcnas.proxy.keys import fidelity_key, teacher_key

    space = tt.space
    cols = [attack_column(tt.config.attack), *tt.config.proxy.also_attacks]
    rows = []
    for i, actions in zip(range(N_ROWS), every_subnet(space)):
        arch = space.arch(actions)
        cost = space.cost(arch)
        rows.append(Row(arch, cost.macs, cost.params, "ok", 0.8, {c: 0.5 - 0.01 * i for c in cols}, 1.5))
    teacher = {c: asdict(TeacherStats("fake", 0.95, 0.7, 12.0, 359, 0.0)) for c in cols}
    header = {"teacher": tt.teacher.name, "teacher_key": teacher_key(tt), "fidelity_key": fidelity_key(tt.config),
              "proxy": tt.config.proxy.model_dump(exclude={"also_attacks"}), "ratio": tt.config.budget.ratio,
              "attacks": {cols[0]: tt.config.attack.model_dump(),
                          **{c: a.model_dump() for c, a in tt.config.proxy.also_attacks.items()}},
              "teacher_stats": teacher, "base_channels": list(tt.teacher.base_channels), "n_val": 359,
              "tasks": TABLE_TASKS, "code_version": code_version(), "rows": len(rows), "command": "test"}
    path = tmp_path_factory.mktemp("good") / "good.csv.gz"
    write_table(path, header, rows, ["a small table for tests"])
    return gzip.decompress(path.read_bytes()).decode()


def table(tmp_path: Path, text: str, name: str = "t.csv.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()))
    return path


def with_header(text: str, edit) -> str:
    first, rest = text.split("\n", 1)
    header = json.loads(first[len("#json "):])
    edited = edit(header)
    return "#json " + json.dumps(header if edited is None else edited) + "\n" + rest


def with_field(text: str, row: int, column: str, value: str) -> str:
    """``text`` with one field of data row ``row`` (1-based) replaced."""
    lines = text.split("\n")
    names_at = next(i for i, line in enumerate(lines) if line.startswith("depths,"))
    names = lines[names_at].split(",")
    fields = lines[names_at + row].split(",")
    fields[names.index(column)] = value
    lines[names_at + row] = ",".join(fields)
    return "\n".join(lines)


def test_the_small_table_reads(tmp_path, tt, good_text):
    got = read_table(table(tmp_path, good_text), tt)
    assert len(got.rows) == N_ROWS and got.teacher("pgd20").robust_acc == pytest.approx(0.7)


def bounded_read(path: Path, tt) -> tuple[pytest.ExceptionInfo, int]:
    """read_table's error and the peak of Python's (and zlib's) allocations while it ran."""
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as exc:
            read_table(path, tt)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return exc, peak


def test_a_gzip_bomb_header_stops_at_the_cap(tmp_path, tt):
    """A small file whose header line decompresses to 64 MiB: refused after the first MAX_HEADER_BYTES, never
    decompressed whole (before: a 382 KB file with a 300 MB header reached 952 MiB)."""
    path = tmp_path / "bomb.csv.gz"
    with gzip.GzipFile(path, "wb", compresslevel=9) as f:
        f.write(b'#json {"teacher": "')
        chunk = b" " * (1 << 20)
        for _ in range(64):
            f.write(chunk)
    assert path.stat().st_size < 200_000
    exc, peak = bounded_read(path, tt)
    one_line_error(exc, path, "header line is longer than", "MAX_HEADER_BYTES")
    assert peak < 16 * MAX_HEADER_BYTES, f"{peak / 2**20:.1f} MiB allocated reading a bomb"


def test_a_gzip_bomb_body_stops_at_the_total_cap(tmp_path, tt, good_text):
    """A valid header, then comment lines decompressing to 4x MAX_TABLE_BYTES: refused at the cap, line by line."""
    path = tmp_path / "bomb.csv.gz"
    header = good_text.split("\n", 1)[0] + "\n"
    line = b"#" + b"x" * 60_000 + b"\n"
    with gzip.GzipFile(path, "wb", compresslevel=9) as f:
        f.write(header.encode())
        for _ in range(4 * MAX_TABLE_BYTES // len(line)):
            f.write(line)
    exc, peak = bounded_read(path, tt)
    one_line_error(exc, path, "MAX_TABLE_BYTES")
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB allocated reading a bomb"


def test_an_endless_line_stops_at_the_line_cap(tmp_path, tt, good_text):
    path = table(tmp_path, good_text + "1-1-1," + "9" * (2 << 20))
    exc, peak = bounded_read(path, tt)
    one_line_error(exc, path, "MAX_LINE_BYTES")
    assert peak < 8 * 2**20


@pytest.mark.parametrize("column", ["clean", "pgd20", "cw20"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-0.1", "1.5", "x"])
def test_accuracies_must_be_finite_and_in_0_1(tmp_path, tt, good_text, column, value):
    path = table(tmp_path, with_field(good_text, 2, column, value))
    with pytest.raises(ConfigError) as exc:
        read_table(path, tt)
    one_line_error(exc, path, "row 2", column, "regenerate")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "x"])
def test_seconds_must_be_finite_and_not_negative(tmp_path, tt, good_text, value):
    path = table(tmp_path, with_field(good_text, 1, "seconds", value))
    with pytest.raises(ConfigError) as exc:
        read_table(path, tt)
    one_line_error(exc, path, "row 1", "seconds")


@pytest.mark.parametrize(("column", "value", "says"), [
    ("depths", "5-1-1", "outside teacher"),  # deeper than the teacher's stage
    ("widths", "1-1-9", "outside teacher"),  # wider
    ("blocks", "basic_block-basic_block-evil", "outside teacher"),  # no such block
    ("depths", "1-1", "3 stages"),
    ("depths", "0-1-1", "outside teacher"),
    ("depths", "+1-1-1", "not a whole number"),
    ("macs", "1", "not the row's"),  # the cost model counts otherwise
    ("params", "99999999", "not the row's"),
    ("status", "great", "status"),
])
def test_rows_outside_the_teacher_are_refused(tmp_path, tt, good_text, column, value, says):
    path = table(tmp_path, with_field(good_text, 3, column, value))
    with pytest.raises(ConfigError) as exc:
        read_table(path, tt)
    one_line_error(exc, path, "row 3", says)


def test_a_row_over_the_tables_budget_is_refused(tmp_path, tt, good_text):
    teacher = tt.teacher.arch
    cost = tt.space.cost(teacher)  # the teacher itself: over every ratio below 1
    text = good_text
    for col, v in (("depths", "-".join(map(str, teacher.depths))), ("widths", "-".join(map(str, tt.teacher.widths))),
                   ("blocks", "-".join(teacher.blocks)), ("macs", str(cost.macs)), ("params", str(cost.params))):
        text = with_field(text, 1, col, v)
    path = table(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        read_table(path, tt)
    one_line_error(exc, path, "row 1", "over the table's budget")


def test_short_long_duplicate_and_missing_rows(tmp_path, tt, good_text):
    lines = good_text.rstrip("\n").split("\n")
    cases = {
        "short": ("\n".join(lines[:-1] + [lines[-1].rsplit(",", 2)[0]]), "fields"),
        "long": ("\n".join(lines[:-1] + [lines[-1] + ",1"]), "fields"),
        "duplicate": ("\n".join(lines[:-1] + [lines[-2]]), "twice"),
        "truncated": ("\n".join(lines[:-1]), "truncated"),
        "extra": ("\n".join(lines + [lines[-1]]), "more rows than the header"),
        "csv header": ("\n".join(lines).replace("depths,widths", "widths,depths"), "CSV header"),
        "no rows": (lines[0], "truncated"),
        "no header line": ("\n".join(lines[1:]), "no #json header"),
    }
    for name, (text, says) in cases.items():
        path = table(tmp_path, text, f"{name.replace(' ', '-')}.csv.gz")
        with pytest.raises(ConfigError) as exc:
            read_table(path, tt)
        one_line_error(exc, path, says)


@pytest.mark.parametrize(("edit", "says"), [
    (lambda h: [h], "a JSON array, not an object"),
    (lambda h: "header", "a JSON string"),
    (lambda h: h.pop("ratio") and None, "lacks ['ratio']"),
    (lambda h: h.update(extra=1), "unknown keys"),
    (lambda h: h.update(ratio=float("nan")), "ratio"),
    (lambda h: h.update(ratio=2), "ratio"),
    (lambda h: h.update(rows=-1), "rows"),
    (lambda h: h.update(columns=["pgd20", "pgd20", "fgsm", "cw20"]), "columns"),
    (lambda h: h.update(columns=["pgd20", "fgsm"]), "columns"),
    (lambda h: h.update(base_channels=[1, 1, 1]), "base_channels"),
    (lambda h: h.update(n_val="many"), "n_val"),
    (lambda h: h["teacher_stats"].pop("cw20") and None, "teacher_stats"),
    (lambda h: h["teacher_stats"].update(extra=h["teacher_stats"]["cw20"]), "teacher_stats"),
    (lambda h: h["teacher_stats"]["cw20"].pop("lipschitz") and None, "missing keys ['lipschitz']"),
    (lambda h: h["teacher_stats"]["cw20"].update(bogus=1), "unknown keys ['bogus']"),
    (lambda h: h["teacher_stats"]["fgsm"].update(robust_acc=float("nan")), "robust_acc is nan"),
    (lambda h: h["teacher_stats"]["fgsm"].update(clean_acc=1.2), "clean_acc"),
    (lambda h: h["teacher_stats"].update(fgsm=[1, 2]), "not an object"),
])
def test_a_bad_header_is_one_line(tmp_path, tt, good_text, edit, says):
    path = table(tmp_path, with_header(good_text, edit))
    with pytest.raises(ConfigError) as exc:
        read_table(path, tt)
    one_line_error(exc, path, "line 1", says)


def test_a_header_that_is_not_json_or_too_deep(tmp_path, tt, good_text):
    for name, first in (("broken", "#json {"), ("deep", "#json " + "[" * 100_000)):
        path = table(tmp_path, first + "\n" + good_text.split("\n", 1)[1], f"{name}.csv.gz")
        with pytest.raises(ConfigError) as exc:
            read_table(path, tt)
        one_line_error(exc, path, "not JSON")


def test_a_table_of_another_teacher_is_refused(tmp_path, good_text):
    other = load_task(task_path("digits-cw-e20-t332-r35"))
    path = table(tmp_path, good_text)
    with pytest.raises(ConfigError) as exc:
        read_table(path, other)
    one_line_error(exc, path, "the table's teacher")


def test_damaged_gzip_is_one_line(tmp_path, tt, good_text):
    whole = gzip.compress(good_text.encode())
    for name, data in (("cut", whole[: len(whole) // 2]), ("flipped", whole[:30] + bytes([whole[30] ^ 0xFF])
                                                              + whole[31:]), ("plain", good_text.encode())):
        path = tmp_path / f"{name}.csv.gz"
        path.write_bytes(data)
        with pytest.raises(ConfigError) as exc:
            read_table(path, tt)
        one_line_error(exc, path, "not a readable rcnas table")
    with pytest.raises(ConfigError) as exc:
        read_table(tmp_path, tt)
    one_line_error(exc, tmp_path, "not a regular file")


# -- evaluation stores ---------------------------------------------------------------------------------------------
@pytest.fixture()
def store_file(tmp_path) -> tuple[Path, object]:
    """A store with one evaluation and one request, closed; (its path, the evaluation's key)."""
    from rcnas.proxy.local import eval_key
    from tests.conftest import tiny_task
    from tests.fakes import FakeEvaluator

    task = tiny_task()
    arch = task.teacher.subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)
    metrics = FakeEvaluator().evaluate(task, arch).metrics
    path = tmp_path / "evaluations.sqlite"
    store = EvaluationStore(path)
    key = eval_key(task, arch)
    store.put(key, arch, metrics, task.name)
    store.log_request("me", key, task.name, False)
    store.close()
    return path, key


def raw(path: Path, *sql: str, args: tuple = ()) -> None:
    db = sqlite3.connect(path)
    for s in sql:
        db.execute(s, args) if args else db.execute(s)
    db.commit()
    db.close()


def test_a_good_store_checks_and_reopens(store_file, tmp_path):
    path, key = store_file
    assert check_store(path) == 1
    assert check_store(tmp_path / "none.sqlite") == 0 and not (tmp_path / "none.sqlite").exists()
    store = EvaluationStore(path)
    assert store.get(key) is not None and len(list(store.rows())) == 1 and len(store.requests("me")) == 1
    store.close()


@pytest.mark.parametrize(("metrics", "says"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "a JSON array"),
    ("null", "a JSON null"),
    ('"x" ', "a JSON string"),
    ("[" * 50_000, "not valid JSON"),
    ("NAN_ROBUST", "robust_acc is nan"),
    ("NEG_MACS", "macs is -1"),
    ("OVER_CLEAN", "clean_acc is 1.5"),
    ("BAD_STATUS", "status is 'great'"),
    ("EXTRA_KEY", "unknown keys ['evil']"),
    ("NO_SEED", "missing keys ['seed']"),
    ("BAD_ALSO", "also"),
])
def test_a_corrupt_metrics_row_refuses_the_store_in_one_line(store_file, metrics, says):
    path, key = store_file
    good = json.loads(sqlite3.connect(path).execute("SELECT metrics_json FROM evaluations").fetchone()[0])
    edits = {"NAN_ROBUST": {"robust_acc": math.nan}, "NEG_MACS": {"macs": -1}, "OVER_CLEAN": {"clean_acc": 1.5},
             "BAD_STATUS": {"status": "great"}, "EXTRA_KEY": {"evil": 1}, "BAD_ALSO": {"also": {"x": math.inf}}}
    if metrics in edits:
        metrics = json.dumps({**good, **edits[metrics]})
    elif metrics == "NO_SEED":
        metrics = json.dumps({k: v for k, v in good.items() if k != "seed"})
    raw(path, "UPDATE evaluations SET metrics_json=?", args=(metrics,))
    with pytest.raises(ConfigError) as exc:
        check_store(path)
    one_line_error(exc, path, "evaluations row 1", says, "DELETE FROM evaluations WHERE rowid=1")
    store = EvaluationStore(path)  # the schema is fine: the row is refused when it is read
    for read in (lambda: store.get(key), lambda: list(store.rows()), lambda: store.requests("me")):
        with pytest.raises(ConfigError) as exc:
            read()
        one_line_error(exc, path, "evaluations row 1", says)
    store.close()


def test_a_corrupt_arch_row_or_key_refuses_the_store(store_file):
    path, _ = store_file
    good = sqlite3.connect(path).execute("SELECT arch_json FROM evaluations").fetchone()[0]
    d = json.loads(good)
    d["stages"][0]["depth"] = 2  # another sub-network than the row's key says
    for arch_json, says in (("{", "not valid JSON"), ('{"stages": 1}', "not a sub-network"),
                            (json.dumps(d), "whose key is")):
        raw(path, "UPDATE evaluations SET arch_json=?", args=(arch_json,))
        with pytest.raises(ConfigError) as exc:
            check_store(path)
        one_line_error(exc, path, "arch_json", says)


def test_a_value_over_the_length_limit_is_refused_unread(store_file):
    path, _ = store_file
    raw(path, "UPDATE evaluations SET metrics_json=?", args=("x" * (MAX_VALUE_BYTES + 10),))
    with pytest.raises(ConfigError) as exc:
        check_store(path)
    one_line_error(exc, path, "too big")


def test_a_wrongly_typed_key_column_is_refused(store_file):
    path, _ = store_file
    raw(path, "UPDATE requests SET cached=7")
    with pytest.raises(ConfigError) as exc:
        check_store(path)
    one_line_error(exc, path, "requests row 1", "wrong type")


def test_current_version_with_other_columns_is_refused(tmp_path):
    path = tmp_path / "evaluations.sqlite"
    raw(path, "CREATE TABLE evaluations (task TEXT, arch TEXT, fidelity TEXT, seed INTEGER, payload BLOB)",
        "CREATE TABLE requests (seq INTEGER PRIMARY KEY AUTOINCREMENT, client TEXT)", "PRAGMA user_version=2")
    for open_ in (EvaluationStore, check_store):
        with pytest.raises(ConfigError) as exc:
            open_(path)
        one_line_error(exc, path, "has columns", "payload")


def test_same_columns_declared_otherwise_are_refused(tmp_path):
    """Same column names, but a CHECK that would make our own inserts fail: not this schema."""
    from rcnas.proxy.store import SCHEMA

    path = tmp_path / "checked.sqlite"
    raw(path, *[s.replace("created REAL NOT NULL\n)", "created REAL NOT NULL CHECK (created < 0)\n)")
                for s in SCHEMA.split(";")], "PRAGMA user_version=2")
    with pytest.raises(ConfigError) as exc:
        EvaluationStore(path)
    one_line_error(exc, path, "declared otherwise")


@pytest.mark.parametrize(("sql", "says"), [
    ("CREATE TRIGGER spy AFTER INSERT ON evaluations BEGIN DELETE FROM evaluations; END", "unknown trigger 'spy'"),
    ("CREATE VIEW v AS SELECT * FROM evaluations", "unknown view 'v'"),
    ("CREATE INDEX extra ON evaluations (created)", "unknown index 'extra'"),
    ("CREATE TABLE people (name TEXT)", "unknown tables"),
])
def test_schema_objects_of_someone_else_are_refused(store_file, sql, says):
    path, _ = store_file
    raw(path, sql)
    for open_ in (EvaluationStore, check_store):
        with pytest.raises(ConfigError) as exc:
            open_(path)
        one_line_error(exc, path, says)
    # nothing was written: the object is still there, and the row it would have deleted too
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 1
    db.close()


def test_a_bad_store_is_one_error_line_and_exit_2(store_file, capsys):
    from rcnas.infra import cli

    path, _ = store_file
    raw(path, "UPDATE evaluations SET metrics_json='{'")
    with pytest.raises(SystemExit) as code:
        cli.run_main(lambda: check_store(path))
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.startswith(f"error: {path}") and err.count("\n") == 1, err


def test_a_validated_record_round_trips():
    from rcnas.proxy.records import ProxyMetrics
    from tests.conftest import tiny_task
    from tests.fakes import FakeEvaluator

    task = tiny_task()
    m = FakeEvaluator().evaluate(task, task.teacher.subnet((1, 1, 1), (1, 1, 1), ("basic_block",) * 3)).metrics
    m = replace(m, also={"fgsm": 0.25})
    assert ProxyMetrics.from_json(json.dumps(m.to_dict())) == m
    old = m.to_dict()
    del old["also"]  # records older than ``also``
    assert ProxyMetrics.from_dict(old).also == {}
