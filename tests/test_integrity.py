"""A result keeps its identity: the integrity audit's eight cases, each planted as the audit planted it.

A cached or resumed training result is used only when its checkpoint records this very identity (config,
dataset, the data's measured fingerprint, the training code) at the planned final epoch, with numbers its
weights measure; whether data is the official CIFAR-10 is measured, never read from a record; two settings
never share a name; a report folder covers every input that changes a number in it; what cannot be done
is refused before anything exists."""

import dataclasses
import hashlib
import json
import shutil
import typing
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dropout_lab.analysis import history
from dropout_lab.analysis.tracking import headline_metrics
from dropout_lab.config import PARAMETERS, SETTINGS, NotInResult, TrainConfig, compared_variants, design_of
from dropout_lab.core.checkpoint import load_checkpoint, save_checkpoint
from dropout_lab.core.claims import STORE_ENV
from dropout_lab.core.data import DataError
from dropout_lab.core.evaluate import run_data
from dropout_lab.naming import experiment_name, flow_run_label, run_folder_name
from dropout_lab.runtime import devices
from dropout_lab.runtime.devices import variant_configs
from flows.compare import main
from tests.flow_runs import run_flow
from tests.refusals import one_line_refusal

EPOCHS = 2


@pytest.fixture(scope="module")
def ws(tiny_cifar, tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    shutil.copytree(tiny_cifar / "cifar-10-batches-py", root / "data" / "cifar-10-batches-py")
    return root


def run(ws: Path, cache: str = "cache", out: str = "out", **overrides) -> tuple[Path, dict[str, set[str]]]:
    """The flow on the tiny CIFAR-format copy: (report folder, task run name → states)."""
    return run_flow(ws, **{"cache_dir": str(ws / cache), "out": str(ws / out), "epochs": EPOCHS, **overrides})[:2]


def records(cache: Path, holding: str) -> list[tuple[Path, dict, typing.Any]]:
    """(file, record, its result as JSON) of every cached record whose result mentions `holding`."""
    found = []
    for f in sorted((cache / "results").iterdir()):
        record = json.loads(f.read_text())
        result = json.loads(record["result"])
        if holding in json.dumps(result):
            found.append((f, record, result))
    return found


def rewrite(path: Path, record: dict, result) -> None:
    path.write_text(json.dumps({**record, "result": json.dumps(result)}))


def training_record(cache: Path, model: str) -> tuple[Path, dict, list]:
    """The cached record of the training task of `model` (e.g. "baseline")."""
    (found,) = [(f, rec, res) for f, rec, res in records(cache, "weights_sha256")
                if variant_name(res[0]["fields"]["config"]["fields"]) == model]  # fmt: skip
    return found


def variant_name(config_fields: dict) -> str:
    from dropout_lab.config import variant_of

    return variant_of(config_fields).name


def summary(folder: Path) -> dict[str, dict]:
    return {r["model"]: r for r in pq.read_table(folder / "summary.parquet").to_pylist()}


def ignored(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "ignoring cached result" in r.getMessage()]


@pytest.fixture(scope="module")
def genuine(prefect_harness, ws):
    """The genuine run every case starts from (and must come back to): its report folder and summary."""
    folder, states = run(ws)
    assert all(s == {"Completed"} for s in states.values()), states
    return folder, summary(folder)


# --- 1: an earlier real checkpoint is not the final one ------------------------------------------------


def test_an_earlier_real_checkpoint_is_not_accepted_as_the_final_one(genuine, ws, caplog):
    path, record, result = training_record(ws / "cache", "baseline")
    fields = result[0]["fields"]
    earlier = Path(fields["checkpoint"]).with_name("epoch-0001.pt")
    state = load_checkpoint(earlier)
    fields["checkpoint"], fields["history"] = str(earlier), state["history"]
    fields["weights_sha256"] = hashlib.sha256(earlier.read_bytes()).hexdigest()
    rewrite(path, record, result)
    folder, states = run(ws)
    assert any("epoch-0001.pt is epoch 1 of 2, not the final one" in m for m in ignored(caplog)), ignored(caplog)
    assert states["train[baseline, seed=0]"] == {"Completed"}  # not taken from the planted record
    assert summary(folder)["baseline"]["final_test_acc"] == genuine[1]["baseline"]["final_test_acc"]
    rows = [r for r in pq.read_table(folder / "per_epoch.parquet").to_pylist() if r["model"] == "baseline"]
    assert [r["epoch"] for r in rows] == [1, 2]


# --- 2: a checkpoint trained on other data ----------------------------------------------------------------


def test_a_checkpoint_trained_on_other_data_is_set_aside_and_the_model_trained_on_this_data(genuine, ws, caplog):
    fake_folder, _ = run(ws, cache="fake-cache", out="fake-out", dataset="fake")
    fake = summary(fake_folder)
    cache = ws / "cache"
    for theirs in (ws / "fake-cache" / "checkpoints").iterdir():  # same-named <variant>-seed-N-* folders
        prefix = theirs.name.rsplit("-", 1)[0]
        (ours,) = [f for f in (cache / "checkpoints").iterdir() if f.name.rsplit("-", 1)[0] == prefix]
        for checkpoint in theirs.glob("epoch-*.pt"):
            shutil.copy(checkpoint, ours / checkpoint.name)
    for path, _, _ in records(cache, "weights_sha256"):
        path.unlink()  # the training records deleted: the tasks run, and find those checkpoints
    folder, _ = run(ws)
    now = summary(folder)
    for model, row in genuine[1].items():
        assert now[model]["final_test_acc"] == row["final_test_acc"] != fake[model]["final_test_acc"]
    aside = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert any("trained on the 'fake' dataset, not 'cifar10'" in m for m in aside), aside


# --- 3: "verified" is measured, never read --------------------------------------------------------------


def test_a_record_cannot_make_an_unverified_copy_verified(genuine, ws, caplog):
    ((path, record, result),) = records(ws / "cache", "provenance")
    result["fields"]["verified"], result["fields"]["provenance"] = True, "CIFAR-10 (official files, md5 verified)"
    rewrite(path, record, result)
    folder, states = run(ws)
    assert [s for n, s in states.items() if n.startswith("fetch_cifar10")] == [{"Completed"}]
    assert any("it says verified True, the files measure False" in m for m in ignored(caplog)), ignored(caplog)
    text = (folder / "summary.md").read_text()
    assert "md5 verified" not in text and "data unverified" in text
    assert not any(r["data_verified"] for r in summary(folder).values())


# --- 4: a consistently re-signed checkpoint ---------------------------------------------------------------


def test_a_re_signed_checkpoint_with_other_numbers_is_refused_and_retrained(genuine, ws, caplog):
    path, record, result = training_record(ws / "cache", "baseline")
    fields = result[0]["fields"]
    final = Path(fields["checkpoint"])
    state = load_checkpoint(final)
    for epoch in state["history"]:
        epoch["test_acc"] -= 0.6
    sha = save_checkpoint(final, state)  # the project's own writer: magic, checksum and identity all right
    fields["weights_sha256"], fields["history"] = sha, state["history"]
    rewrite(path, record, result)
    folder, _ = run(ws)
    assert summary(folder)["baseline"]["final_test_acc"] == genuine[1]["baseline"]["final_test_acc"]
    assert any("test accuracy" in m and "is not its weights'" in m for m in ignored(caplog)), ignored(caplog)
    aside = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert any("epoch-0002.pt" in m and "is not its weights'" in m for m in aside), aside  # resumed from epoch 1
    assert (final.parent / "epoch-0002.pt.corrupt").exists()


def test_a_re_signed_checkpoint_claiming_other_image_counts_is_refused_and_retrained(genuine, ws, caplog):
    """The audit's case: the project's writer, n_train 50,000 / n_test 10,000 in every epoch record."""
    path, record, result = training_record(ws / "cache", "baseline")
    fields = result[0]["fields"]
    final = Path(fields["checkpoint"])
    state = load_checkpoint(final)
    for epoch in state["history"]:
        epoch["n_train"], epoch["n_test"] = 50_000, 10_000
    fields["weights_sha256"], fields["history"] = save_checkpoint(final, state), state["history"]
    rewrite(path, record, result)
    folder, _ = run(ws)
    rows = summary(folder)["baseline"]
    assert (rows["n_train"], rows["n_test"]) == (genuine[1]["baseline"]["n_train"], genuine[1]["baseline"]["n_test"])
    assert any("claims n_train 50000, the data gives" in m for m in ignored(caplog)), ignored(caplog)
    per_epoch = [r for r in pq.read_table(folder / "per_epoch.parquet").to_pylist() if r["model"] == "baseline"]
    assert {r["n_test"] for r in per_epoch} == {genuine[1]["baseline"]["n_test"]}


def test_genuine_checkpoints_measured_on_another_machine_pass_the_re_measurement(genuine, ws, tmp_path, monkeypatch):
    """A checkpoint this user's runs did not write (another machine's, a copied cache) is re-measured
    from its weights, and a genuine one passes: the check refuses lies, not results."""
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "nothing-measured-here.txt"))
    _, states = run(ws)
    assert all(s == {"Cached"} for n, s in states.items() if n.startswith("train[")), states
    lines = (tmp_path / "nothing-measured-here.txt").read_text().splitlines()
    assert len(lines) == 2 and all(len(line.split()) == 2 for line in lines)  # both re-measured, recorded with claims


# --- 4b: a report never vouches for itself ----------------------------------------------------------------


def test_a_forged_report_is_written_again_from_the_checked_trainings(genuine, ws):
    """The audit's forgery: summary.md edited (and any record beside it adjusted). The rerun writes the
    report again from the trainings, whatever a record says, and says so only when nothing changed."""
    folder = genuine[0]
    true_text = (folder / "summary.md").read_text()
    (folder / "summary.md").write_text(true_text + "\nDropout is better by 9 points.\n")
    (folder / "statistics.parquet").write_bytes(b"forged")
    again, states, artifacts = run_flow(ws, out=str(ws / "out"), epochs=EPOCHS)
    assert again == folder and (folder / "summary.md").read_text() == true_text
    assert pq.read_table(folder / "statistics.parquet").num_rows > 0
    assert [s for n, s in states.items() if n.startswith("render_report")] == [{"Completed"}]
    assert [a.type for a in artifacts if a.key and a.key.startswith("dropout-comparison")] == ["markdown"]
    _, _, artifacts = run_flow(ws, out=str(ws / "out"), epochs=EPOCHS)  # the same files again: a link, no copy
    assert [a.type for a in artifacts if not a.key] == ["markdown"] and not [a for a in artifacts if a.key]


# --- 5: two values that print alike ------------------------------------------------------------------------


def test_two_rates_that_print_alike_keep_their_own_names_rows_and_history(prefect_harness, ws):
    folder, states = run(ws, dropout=[0.1, 0.1000001], epochs=1, cache="alike-cache", out="alike-out", stack="on")
    assert "train[3 variants on cpu]" in states  # one stacked training process for the three
    rows = pq.read_table(folder / "per_epoch.parquet").to_pylist()
    assert sorted((r["model"], r["dropout"]) for r in rows) == [
        ("baseline", 0.0), ("dropout=0.1", 0.1), ("dropout=0.1000001", 0.1000001)]  # fmt: skip
    recorded = [r for r in history.read(history.store_uri(ws / "alike-out")) if r["report_folder"] == str(folder)]
    assert sorted(r["model"] for r in recorded) == ["baseline", "dropout=0.1", "dropout=0.1000001"]
    assert len({r["weights_sha256"] for r in recorded}) == 3
    assert "p0.1+0.1000001" in folder.name
    stats = pq.read_table(folder / "statistics.parquet").to_pylist()
    metrics = headline_metrics(stats)
    assert "dropout_0.1.test_acc" in metrics and "dropout_0.1000001.test_acc" in metrics
    assert flow_run_label(
        {
            "dropout": [0.1, 0.1000001],
            "weight_decay": [],
            "dataset": "cifar10",
            "limit_train": 0,
            "limit_test": 0,
            "seeds": [0],
            "max_seeds": 20,
            "epochs": 1,
        }
    ).startswith("p=0.1,0.1000001 ")


# --- 6: every input that changes a number changes the folder ------------------------------------------------


def test_another_margin_writes_another_folder_and_leaves_the_first_one_as_it_was(prefect_harness, ws):
    # stacked: one training process per wave, not ten
    args = dict(dataset="fake", epochs=1, limit_train=200, limit_test=100, seeds="auto", max_seeds=5, stack="on",
                cache="auto-cache", out="auto-out")  # fmt: skip
    first, _ = run(ws, margin=0.1, **args)
    before = (first / "statistics.parquet").read_bytes()
    second, states = run(ws, margin=5.0, **args)
    assert second != first and all(s == {"Cached"} for n, s in states.items() if n.startswith("train["))
    assert (first / "statistics.parquet").read_bytes() == before
    assert {r["margin"] for r in table(first) if r["decision"]} == {0.001}
    recorded = history.read(history.store_uri(ws / "auto-out"))
    assert {r["report_folder"] for r in recorded} >= {str(first), str(second)}  # each run's rows: its own folder
    # The same report rebuilt from the cache elsewhere: the very same statistics.
    rebuilt, _ = run(ws, margin=0.1, **{**args, "out": "auto-rebuilt"})
    assert rebuilt.name == first.name and same(table(rebuilt), table(first))


def table(folder: Path) -> list[dict]:
    return pq.read_table(folder / "statistics.parquet").to_pylist()


def same(a: list[dict], b: list[dict]) -> bool:
    """Equal rows, NaN equal to NaN (a baseline row has no difference to itself)."""
    return len(a) == len(b) and all(
        ra.keys() == rb.keys()
        and all(x == y or (x != x and y != y) for x, y in zip(ra.values(), rb.values(), strict=True))
        for ra, rb in zip(a, b, strict=True)
    )


# Alternative values for every flow parameter (a new parameter fails the walk until it is added here).
ALTERNATIVES = {
    "data_dir": "elsewhere", "out": "elsewhere", "epochs": 3, "batch_size": 64, "lr": 0.01,
    # a value each compared setting takes, other than its default; a variant combining two
    **{s.field: [s.choices[-1] if s.choices else 0.1] for s in SETTINGS}, "variant": ["dropout=0.1,augment=flip-crop"],
    "seeds": [0, 1], "max_seeds": 10, "margin": 2.0, "device": "cuda:0", "precision": "bf16", "compile": True,
    "stack": "on", "cuda_graphs": "off", "limit_train": 1000, "limit_test": 100, "train_eval_images": 5000,
    "val_images": 1000, "dataset": "fake", "refresh": True, "cache_dir": "elsewhere", "log_models": True,
}  # fmt: skip


def folder_key(params: dict) -> str:
    """The report folder a run with these parameters writes to (on a machine with one GPU)."""
    shared = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed", "device", *(s.field for s in SETTINGS)}
    configs = variant_configs(
        TrainConfig(**{name: params[name] for name in shared if name in params}), compared_variants(params),
        list(range(params["max_seeds"])) if params["seeds"] == "auto" else params["seeds"], params["device"],
    )  # fmt: skip
    return run_folder_name(configs, params["dataset"], "fingerprint", design_of(params))


def test_every_parameter_changes_the_folder_or_is_declared_as_changing_no_number(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 1)
    base = {name: p.default for name, p in PARAMETERS.parameters.items()}
    base.update(seeds="auto", device="cpu", max_seeds=5)
    assert set(ALTERNATIVES) == set(base), "every flow parameter needs an alternative value here"
    for name, value in ALTERNATIVES.items():
        reference = {**base, **({"device": "cuda:0"} if name == "precision" else {})}  # bf16 needs CUDA
        key, changed = folder_key(reference), folder_key({**reference, name: value})
        declared = [m for m in getattr(PARAMETERS.parameters[name].annotation, "__metadata__", ())
                    if isinstance(m, NotInResult)]  # fmt: skip
        if declared:
            assert declared[0].why, name
            assert changed == key, f"--{name} is declared as changing no number, yet it changes the folder"
        else:
            assert changed != key, f"--{name} changes the report's numbers but not its folder"
    assert experiment_name([TrainConfig()], "cifar10") != experiment_name([TrainConfig(dropout=0.1000001)], "cifar10")


# --- 7 and 8: what cannot be done is refused before anything exists -----------------------------------------


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--dataset", "fake", "--val-images", "2000"], "--val-images 2000 leaves nothing to train on"),
        (["--dataset", "fake", "--limit-train", "1000", "--val-images", "1000"], "leaves nothing to train on"),
        (["--dataset", "fake", "--limit-train", "5000"], "--limit-train 5000: the fake dataset has 2,000"),
        (["--dropout", "0", "--seeds", "auto"], "nothing to compare with the baseline"),
        (["--dropout", "0", "0"], "nothing to compare with the baseline"),
    ],
)
def test_what_cannot_be_done_is_refused_in_one_line_before_anything_is_created(argv, says, capsys, tmp_path):
    where = ["--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")]
    assert says in one_line_refusal(capsys, 2, main, *argv, *where)
    assert list(tmp_path.iterdir()) == []


def test_a_hold_out_as_large_as_a_folder_s_training_images_is_refused_when_the_data_is_read(tiny_cifar):
    root = tiny_cifar / "cifar-10-batches-py"
    with pytest.raises(DataError, match="--val-images 320 leaves nothing to train on"):
        run_data(root, TrainConfig(val_images=320))
    assert len(run_data(root, TrainConfig(val_images=100)).val[1]) == 100


def test_a_checkpoint_ahead_of_the_plan_or_with_a_short_history_is_not_resumed(splits, tmp_path, caplog):
    from dropout_lab.core.train import fit

    cfg = TrainConfig(epochs=2, limit_train=64, limit_test=32, train_eval_images=32)
    folder = tmp_path / "run"
    list(fit([cfg], *splits, [folder]))
    state = load_checkpoint(folder / "epoch-0002.pt")
    save_checkpoint(folder / "epoch-0005.pt", {**state, "epoch": 5})  # a later epoch than planned
    events = [r for _, r in fit([cfg], *splits, [folder])]
    assert events == [] and (folder / "epoch-0005.pt.corrupt").exists()
    assert any("holds epoch 5 of a 2-epoch training" in r.getMessage() for r in caplog.records)


def test_a_known_checkpoint_is_vouched_for_by_its_bytes_and_its_whole_claim(tmp_path, monkeypatch):
    """The torch-free check of a cached training (dropout_lab/core/claims.py): only these very bytes, in
    their own folder, listed with this identity, the planned final epoch and this history, pass; any
    other claim about them goes through the full check."""
    from dropout_lab.core.claims import claim_key, identity, known_claim, record_measured

    monkeypatch.setenv(STORE_ENV, str(tmp_path / "measured.txt"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = folder / "epoch-0002.pt"
    path.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    expected = identity({"epochs": 2, "dropout": 0.25}, {"dataset": "fake", "data_fingerprint": "f", "code": "c"})
    history = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.6}]
    assert not known_claim(str(path), sha, folder, expected, history)  # nothing recorded yet
    record_measured(sha, claim_key(expected, 2, history))
    assert known_claim(str(path), sha, folder, expected, history)
    assert not known_claim(str(path), sha, folder, expected, [*history[:1], {"epoch": 2, "test_acc": 0.9}])
    assert not known_claim(str(path), sha, folder, {**expected, "dataset": "cifar10"}, history)
    earlier = identity({"epochs": 3, "dropout": 0.25}, {"dataset": "fake", "data_fingerprint": "f", "code": "c"})
    record_measured(sha, claim_key(earlier, 2, history))  # an epoch-2 checkpoint of a 3-epoch training ...
    assert not known_claim(str(path), sha, folder, earlier, history)  # ... is not its final one
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    (elsewhere / path.name).write_bytes(b"weights")
    assert not known_claim(str(elsewhere / path.name), sha, folder, expected, history)  # not in its folder
    path.write_bytes(b"weightz")
    assert not known_claim(str(path), sha, folder, expected, history)  # other bytes
