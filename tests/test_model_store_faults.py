"""Broken model files and outcome stores (issue 14, cases 6 and 7): one line and the documented exit code.

Each case runs a command in this process through its entry point, with HOME
and the XDG folders in ``tmp_path``: a model file is broken where zest looks
for it (the local model, or the model ``zest train`` wrote), a store is given
with ``--store``. A full disk is SQLite's own: the store's connections may
not grow the database past a few pages (``max_page_count``), which fails as
a full disk does (``SQLITE_FULL``, the transaction rolled back by SQLite).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import skops.io as sio
from sklearn.linear_model import LinearRegression
from test_errors import assert_one_line, run

from collectors.errors import ModelError
from collectors.studies.store import OutcomeStore
from estimator.cli.main import main
from estimator.model.compiled import LoadedModel, local_model_path, trained_model_path
from estimator.model.default import default_model
from estimator.model.regressor import TRUSTED_TYPES, ZeRegressor, load_model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models"
ESTIMATE = ["--job-id", "gpt-1.3b-a100-dp8", "--duration-hours", "1", "--source", "example"]


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """HOME and the user's folders in ``tmp_path``; the model estimates use is loaded afresh."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    default_model.cache_clear()
    yield home
    default_model.cache_clear()


def _trained_copy(**metadata_changes: Any) -> Path:
    """The shipped model copied where ``zest train`` writes, its metadata changed; the .skops path."""
    target = trained_model_path()
    target.parent.mkdir(parents=True)
    for suffix in (".skops", ".npz"):
        shutil.copyfile(SHIPPED / f"ze_model{suffix}", target.with_suffix(suffix))
    metadata = json.loads((SHIPPED / "ze_model.json").read_text(encoding="utf-8")) | metadata_changes
    target.with_suffix(".json").write_text(json.dumps(metadata), encoding="utf-8")
    return target


def _local_model(data: bytes) -> Path:
    """``data`` as the local model (``zest train --with-outcomes``), with the shipped metadata."""
    path = local_model_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    shutil.copyfile(SHIPPED / "ze_model.json", path.with_suffix(".json"))
    return path


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _shipped_without(member: str) -> bytes:
    with zipfile.ZipFile(SHIPPED / "ze_model.skops") as shipped:
        return _zip({n: shipped.read(n) for n in shipped.namelist() if n != member})


# --- case 6: model files --------------------------------------------------------------------------


def test_case_6_an_empty_model_file_is_exit_8(capsys: pytest.CaptureFixture[str]) -> None:
    _local_model(b"")
    code, err = run("estimate-z", ESTIMATE, capsys)
    assert_one_line(
        "estimate-z", err, code, 8, r"ze_model_local\.skops is not a skops model file .*zest train"
    )


def test_case_6_an_empty_compiled_model_file_is_exit_8(capsys: pytest.CaptureFixture[str]) -> None:
    _trained_copy().with_suffix(".npz").write_bytes(b"")
    code, err = run("estimate-z", ESTIMATE, capsys)
    assert_one_line("estimate-z", err, code, 8, r"ze_model\.npz is not a compiled model file")


@pytest.mark.parametrize(
    ("members", "cause"),
    [
        pytest.param({"hello.txt": b"hi"}, "no item named 'schema.json'", id="no-schema"),
        pytest.param({"schema.json": b"[1, 2]"}, "holds no skops schema", id="schema-a-list"),
        pytest.param({"schema.json": b"\xff\xfe not json"}, "", id="schema-not-json"),
        pytest.param({"schema.json": b'{"__loader__": "ObjectNode"}'}, "", id="schema-without-a-type"),
        pytest.param(None, "no item named '00001.npy'", id="array-missing"),
    ],
)
def test_case_6_a_zip_without_a_skops_schema_is_exit_8(
    members: dict[str, bytes] | None, cause: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _local_model(_shipped_without("00001.npy") if members is None else _zip(members))
    code, err = run("estimate-z", ESTIMATE, capsys)
    pattern = rf"ze_model_local\.skops is not a skops model file \(.*{cause}.*\): rebuild it with zest train"
    assert_one_line("estimate-z", err, code, 8, pattern)


@pytest.mark.parametrize("share", ["high", None, True, [0.5], float("nan"), 7])
def test_case_6_metadata_with_a_non_number_share_is_exit_8(
    share: object, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = json.loads((SHIPPED / "ze_model.json").read_text(encoding="utf-8"))
    shares = shipped["capture_shares"]
    shares["shares"]["black-box"]["share"] = share
    _trained_copy(capture_shares=shares)
    code, err = run("estimate-z", ESTIMATE, capsys)
    pattern = r"ze_model\.json: capture share of 'black-box' is .*, not a number in \[0, 1\]: run zest train"
    assert_one_line("estimate-z", err, code, 8, pattern)


def test_case_6_metadata_with_a_non_number_share_given_in_memory_is_a_model_error() -> None:
    loaded = LoadedModel(model=None, metadata={"capture_shares": {"shares": {"heuristic": {"share": "x"}}}})  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"capture share of 'heuristic' is 'x'"):
        loaded.capture_shares()
    with pytest.raises(ModelError, match=r"capture_shares\.shares is not a JSON object"):
        LoadedModel(model=None, metadata={"capture_shares": []}).capture_shares()  # type: ignore[arg-type]


def _smuggling(extra: object) -> ZeRegressor:
    """A small fitted ZeRegressor that carries ``extra``, a type skops trusts by default."""
    rng = np.random.default_rng(0)
    model = ZeRegressor(max_iter=3, min_samples_leaf=5, calibration_folds=2)
    model.fit(rng.normal(size=(40, 3)), rng.uniform(0, 50, 40))
    model.extra_ = extra
    return model


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        pytest.param(
            LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]),
            "sklearn.linear_model._base.LinearRegression",
            id="another-estimator",
        ),
        pytest.param(np.add, "numpy.add", id="a-numpy-ufunc"),
    ],
)
def test_case_6_types_skops_trusts_by_default_are_refused(
    extra: object, refused: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "smuggling.skops"
    sio.dump(_smuggling(extra), path)
    assert refused not in sio.get_untrusted_types(file=path)  # skops alone would load it
    assert refused not in TRUSTED_TYPES
    with pytest.raises(ModelError, match=rf"does not trust \(.*{refused}.*\); refusing to load it"):
        load_model(path)
    _local_model(path.read_bytes())
    code, err = run("estimate-z", ESTIMATE, capsys)
    assert_one_line("estimate-z", err, code, 8, rf"does not trust \(.*{refused}.*\); refusing")


def test_case_6_the_shipped_model_holds_only_types_on_zests_own_list() -> None:
    assert isinstance(load_model(SHIPPED / "ze_model.skops"), ZeRegressor)


# --- case 7: the outcome store ----------------------------------------------------------------------


def _optuna_study(path: Path, *, param: str = "x") -> str:
    """A SQLite Optuna storage at ``path`` holding one finished study, ``tuned``; its URL."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{path}"
    study = optuna.create_study(study_name="tuned", storage=storage, direction="maximize")
    study.optimize(lambda trial: len(trial.suggest_categorical("flags", [param])) / 1e3, n_trials=2)
    return storage


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_case_7_an_optuna_study_db_as_store_is_refused_unmodified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "tuning"
    folder.mkdir()
    study_db = folder / "study.db"
    storage = _optuna_study(study_db)
    before = _files(folder)
    with sqlite3.connect(study_db) as raw:
        header = [raw.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "user_version")]
    for args in (
        ["record", "--storage", storage, "--study", "tuned", "--store", str(study_db)],
        ["history", "--store", str(study_db)],
    ):
        code, err = run("zest", args, capsys)
        assert_one_line("zest", err, code, 16, r"study\.db is not a zest outcomes store .*alembic_version")
        assert _files(folder) == before  # not a byte changed, no journal left beside it
    with sqlite3.connect(f"{study_db.as_uri()}?mode=ro", uri=True) as raw:
        assert [raw.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "user_version")] == header
        assert "runs" not in {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}


def _read_only(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store and its folder made read-only for this user.

    Root writes whatever the modes say; for root, SQLite's connections to the
    store are opened as SQLite opens them for a user who may only read: a
    plain open reads only, and a read-only open of a WAL database fails
    (``SQLITE_CANTOPEN``) unless immutable, as it does where the folder
    cannot take the shared-memory file.
    """
    store.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    store.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() != 0:
        return
    connect = sqlite3.connect

    def as_for_a_reader(database: Any, *args: Any, uri: bool = False, **kwargs: Any) -> sqlite3.Connection:
        text = str(database)
        if not uri and Path(text) == store:
            text, uri = f"{store.as_uri()}?mode=ro", True
        if uri and text.startswith(store.as_uri()) and "immutable=1" not in text:
            error = sqlite3.OperationalError("unable to open database file")
            error.sqlite_errorcode = sqlite3.SQLITE_CANTOPEN
            raise error
        return connect(text, *args, uri=uri, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", as_for_a_reader)


def test_case_7_a_read_only_store_is_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = _optuna_study(tmp_path / "study.db")
    store = tmp_path / "shared" / "outcomes.sqlite"
    assert (
        run("zest", ["record", "--storage", storage, "--study", "tuned", "--store", str(store)], capsys)[0]
        == 0
    )
    capsys.readouterr()
    before = _files(store.parent)
    _read_only(store, monkeypatch)
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["history", "--store", str(store), "--output", "json"])
        out, err = capsys.readouterr()
    finally:
        store.parent.chmod(stat.S_IRWXU)
        store.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert (exit_info.value.code, err) == (0, "")
    assert [s["study"] for s in json.loads(out)["studies"]] == ["tuned"]
    assert _files(store.parent) == before


#: Pages the store's database may grow to in the full-disk case: the schema's 7 fit, a long trial does not.
FULL_AT_PAGES = 8


def test_case_7_a_full_disk_reports_the_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = _optuna_study(tmp_path / "study.db", param="x" * 40_000)  # a trial of ten pages
    store = tmp_path / "outcomes.sqlite"
    connect = sqlite3.connect

    def on_a_full_disk(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        db = connect(database, *args, **kwargs)
        if str(store) in str(database):
            db.execute(f"PRAGMA max_page_count={FULL_AT_PAGES}")
        return db

    monkeypatch.setattr(sqlite3, "connect", on_a_full_disk)
    args = ["record", "--storage", storage, "--study", "tuned", "--store", str(store)]
    code, err = run("zest", args, capsys)
    assert "cannot rollback" not in err
    assert_one_line("zest", err, code, 16, r"cannot write the outcomes store .*\(database or disk is full\)")
    monkeypatch.undo()
    with OutcomeStore(store, read_only=True) as opened:  # the store is whole, and the study not half there
        assert opened.integrity() == "ok"
        assert opened.studies().empty and opened.trials().empty
    assert run("zest", args, capsys)[0] == 0  # with room again, the same command records the study
