"""The comparison report: every table, figure and the markdown summary, written into one folder at once."""

from __future__ import annotations

import base64
import hashlib
import math
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from dropout_lab.analysis.figures import plot_comparison, plot_decisions, plot_samples, plt
from dropout_lab.analysis.stats import by_variant, compare_all, statistics_rows
from dropout_lab.analysis.tables import (
    CONFUSION_SCHEMA,
    PER_CLASS_SCHEMA,
    PER_EPOCH_SCHEMA,
    STATISTICS_SCHEMA,
    SUMMARY_SCHEMA,
    confusion_rows,
    per_class_rows,
    per_epoch_rows,
    summary_rows,
    write_table,
)
from dropout_lab.analysis.verdict import p_text, verdict
from dropout_lab.config import Design, comparison_words, counted, value_text, variant_of
from dropout_lab.core.data import DataInfo
from dropout_lab.locks import remove_dead_leftovers
from dropout_lab.regular import read_regular
from dropout_lab.results import TrainResult


@dataclass(frozen=True)
class Tables:
    """Every table of one report, computed once (`report_tables`) and handed to the report, the UI's
    artifacts, the run history and MLflow: each says the same numbers, decided by the same design."""

    design: Design
    summary: list[dict]  # per model (SUMMARY_SCHEMA)
    per_epoch: list[dict]  # per model and epoch (PER_EPOCH_SCHEMA)
    comparisons: dict  # per decided metric and variant, stats.compare_all's Comparison
    statistics: list[dict]  # per variant and metric (STATISTICS_SCHEMA)
    per_class: list[dict]
    confusion: list[dict]


def report_tables(results: list[TrainResult], data: DataInfo, design: Design) -> Tables:
    """The report's tables for these results (in report order), decided as `design` says."""
    summary = summary_rows(results, data)
    comparisons = compare_all(summary, design)
    return Tables(design, summary, per_epoch_rows(results, data), comparisons,
                  statistics_rows(summary, design, comparisons), per_class_rows(results, data),
                  confusion_rows(results, data))  # fmt: skip


def report_title(summary: list[dict], provenance: str) -> str:
    """Figure title from the per-seed rows: the data's provenance and the data actually used, the recipe,
    seeds, device."""
    r = summary[0]
    devices = ", ".join(sorted({row["device"] for row in summary}))
    seeds = sorted({row["seed"] for row in summary})
    per_model = Counter(variant_of(row) for row in summary).values()  # --seeds auto: decided variants stop
    fewest, most = min(per_model), max(per_model)
    how_many = counted(most, "seed") if fewest == most else f"{fewest}–{most} seeds per model (n in the legends)"
    seed_text = f"seed {seeds[0]}" if len(seeds) == 1 else f"{how_many} (mean, 95% bands)"
    compared = comparison_words({variant_of(row) for row in summary})
    return (
        f"{compared[0].upper()}{compared[1:]} — {provenance}\n"
        f"{r['n_train']:,} train images ({r['n_train_eval']:,} re-evaluated for the gap) / {r['n_test']:,} test "
        f"images, {counted(r['epochs'], 'epoch')}, batch {r['batch_size']}, Adam lr {value_text(r['lr'])}, "
        f"{seed_text}, device {devices}, {r['precision']}{', compiled' if r['compiled'] else ''}"
    )


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


def _p(x: float) -> str:
    return p_text(x)


def _stack_note(row: dict) -> str:
    k = row["stacked_variants"]
    notes = [f"stack of {k}" if k > 1 else "", "CUDA graphs" if row.get("cuda_graphs") else ""]
    return f" ({', '.join(filter(None, notes))})" if any(notes) else ""


SHORT_METRIC = {"final_test_acc": "test acc", "generalization_gap": "gap"}


def statistics_tables(stats: list[dict], checks: bool = True) -> list[str]:
    """Per model: means with 95% intervals over its own seeds; per variant and claim: the decision with the
    repeated interval and p-value it rests on (a gap's train and test sides beside it) and the power at
    its level; then the fixed-sample checks, labelled as ignoring the looks. `stats` rows come in report
    order (statistics_rows)."""
    shown = ("final_test_acc", "generalization_gap")
    rows = {(r["model"], r["metric"]): r for r in stats}
    models = list(dict.fromkeys(r["model"] for r in stats))
    lines = ["| model | seeds | final test acc (95% CI) | gap, points (95% CI) |", "|---|---|---|---|"]
    for model in models:
        acc, gap = rows[model, "final_test_acc"], rows[model, "generalization_gap"]
        lines.append(
            f"| {acc['model']} | {acc['n_seeds']} | {100 * acc['mean']:.2f}% "
            f"({100 * acc['ci95_low']:.2f}–{100 * acc['ci95_high']:.2f}) | {100 * gap['mean']:.2f} "
            f"({100 * gap['ci95_low']:.2f}–{100 * gap['ci95_high']:.2f}) |"
        )
    if len({rows[m, "final_test_acc"]["n_seeds"] for m in models}) > 1:
        lines.append("")
        lines.append("Each model's own seeds above; the differences below pair each variant with the baseline on "
                     "the variant's seeds, so they are not these rows' differences.")  # fmt: skip
    claims = next((r["claims"] for r in stats if r["claims"]), 0)
    repeated = "repeated " if any(r["looks"] > 1 or r["spent_alpha"] < 0.05 / max(claims, 1) for r in stats
                                  if r["claims"]) else ""  # fmt: skip
    level = f"{100 * (1 - 0.05 / claims):.2f}% {repeated}CI" if claims else "CI"
    # Short headers, said in full once above each table: eight columns must fit the run page's width.
    differences = ["", f"Differences in points, variant minus baseline, with the {level} each decision reads off; "
                   "for the gap, the train and test accuracy differences it comes from; the "
                   f"{repeated}p-value of the claim and over all {claims} claims; the difference detected 80% of "
                   "the time at the look's level.", "",
                   f"| vs baseline | metric | decision | difference ({level}) | train, test | seeds | {repeated}p "
                   f"(x{claims}) | detectable |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    fixed = ["", "Fixed-sample checks, points: they ignore the looks, so under --seeds auto they are not the "
              "decisions' p-values.", "", "| vs baseline | metric | 95% CI | paired t p | sign-flip p | Welch p | "
              "Holm p | equivalence p (±margin) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model in models:
        for metric in shown:
            r = rows[model, metric]
            if r["design"] is None:
                continue
            paired = r["design"] == "paired"
            low, high = (r["paired_diff_ci95_low"], r["paired_diff_ci95_high"]) if paired \
                else (r["welch_diff_ci95_low"], r["welch_diff_ci95_high"])  # fmt: skip
            name = SHORT_METRIC[metric]
            bounds = (r["decision_ci_low"], r["decision_ci_high"])
            decided = f"{100 * r['diff_vs_baseline']:+.2f} " + (  # the verdict above says why there is none
                f"({100 * bounds[0]:+.2f} to {100 * bounds[1]:+.2f})" if all(map(math.isfinite, bounds))
                else "(no interval)")  # fmt: skip
            train, test = rows[model, "final_train_eval_acc"], rows[model, "final_test_acc"]
            source = f"{100 * train['diff_vs_baseline']:+.2f}, {100 * test['diff_vs_baseline']:+.2f}" \
                if metric == "generalization_gap" else "—"  # fmt: skip
            p = f"{_p(r['repeated_p_value'])} ({_p(r['repeated_p_value_family'])})"
            detectable = (r["min_detectable_diff_80_low"], r["min_detectable_diff_80_high"])
            power = f"{100 * detectable[0]:.2f}–{100 * detectable[1]:.2f}" if all(map(math.isfinite, detectable)) \
                else "none" if math.isinf(detectable[0]) else "n/a"  # fmt: skip
            differences.append(f"| {r['model']} | {name} | {r['decision'] or 'none (seeds not paired)'} | {decided} | "
                               f"{source} | {r['seeds_used']} | {p} | {power} |")  # fmt: skip
            equivalence = f"{_p(r['equivalence_p_value'])} (±{100 * r['margin']:.2f})"
            fixed.append(f"| {r['model']} | {name} | {100 * low:+.2f} to {100 * high:+.2f} | "
                          f"{_p(r['paired_t_p_value'])} | {_p(r['sign_flip_p_value'])} | {_p(r['welch_p_value'])} | "
                          f"{_p(r['holm_p_value'])} | {equivalence} |")  # fmt: skip
    lines += [*differences, *(fixed if checks else [])]
    return [*lines, ""]


def code_span(text: str) -> str:
    """`text` as a markdown code span nothing inside can end or escape: control characters shown
    escaped (a newline cannot start a block), a backtick fence longer than any backtick run inside.
    Markdown and HTML inside a code span are shown literally."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", shown)), default=0) + 1)
    pad = " " if shown[:1] in ("`", " ") or shown[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{shown}{pad}{fence}"


FIGURES = ("decisions.png", "comparison.png")  # in the report's order: what the verdict rests on, then the curves


def markdown_summary(tables: Tables, data: DataInfo, run_dir: Path, embed_from: Path | None = None) -> str:
    """Markdown of the report: the verdict first, then per-variant statistics, runs and the FIGURES, linked by
    name (summary.md beside them) or, for the Prefect UI, embedded from the folder `embed_from`."""
    summary, design = tables.summary, tables.design
    compared = comparison_words(by_variant(summary))
    lines = [f"# {compared[0].upper()}{compared[1:]}", ""]
    if data.dataset == "fake":
        lines += ["> **synthetic data — accuracies meaningless** (pipeline smoke run)", ""]
    elif not data.verified:
        lines += ["> **data unverified**: the local CIFAR-10 copy does not match the official md5s", ""]
    lines += ["**Verdict**", "", *(f"- {line}" for line in verdict(summary, design, tables.comparisons)), ""]
    if design.plan:  # what the first look forecast, beside what the run did
        undecided = sum(r.get("decision") == "undecided" for r in tables.statistics)
        outcome = f"{counted(undecided, 'claim')} undecided at the budget" if undecided else "every claim decided"
        lines += [f"Plan and outcome: planned {design.plan}; the run took {len(summary)} trainings, {outcome}.", ""]
    first = summary[0]
    lines += [
        f"Data: {data.provenance}; {first['n_train']:,} training images"
        f"{f' ({n_val:,} more held out to choose an epoch)' if (n_val := first.get('n_val')) else ''}, "
        f"{first['n_test']:,} test images, "
        f"{counted(first['epochs'], 'epoch')}. The generalization gap is train accuracy measured like test "
        f"accuracy (eval mode, dropout off, the final weights) on {first['n_train_eval']:,} training images minus "
        "test accuracy; 'running' is the tutorial's mean over the epoch with dropout on. Report folder: "
        f"{code_span(str(run_dir))}",
        "",
    ]
    if any(r["n_seeds"] > 1 for r in tables.statistics):
        lines += statistics_tables(tables.statistics)
    # Short headers, said in full once above: ten columns must fit the run page's width.
    lines += [
        "Per seed, accuracies: train in eval mode and running (train mode), final test, the best test epoch's "
        "(test-selected: optimistic); the gap in points; train time.",
        "",
        "| model | seed | train (eval) | train (running) | test | best test (epoch) | gap | test loss | time "
        "| device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    held_out = any(s.get("val_best_epoch") is not None for s in summary)
    if held_out:  # an honest best epoch: chosen on held-out training images
        lines[-4] = lines[-4].replace("(test-selected: optimistic)", "(test-selected: optimistic) and the test "
                                      "accuracy at the epoch held-out images chose (val-selected)")  # fmt: skip
        lines[-2] = lines[-2].replace("| gap |", "| val-selected (epoch) | gap |")
        lines[-1] += "---|"
    for s in summary:
        val = f"{_pct(s['val_selected_test_acc'])} ({s['val_best_epoch']}) | " if held_out else ""
        seconds = s.get("epochs_seconds", s["train_seconds"])  # a report from before epochs_seconds: the process's
        lines.append(
            f"| {s['model']} | {s['seed']} | {_pct(s['final_train_eval_acc'])} | {_pct(s['final_train_running_acc'])} "
            f"| {_pct(s['final_test_acc'])} | {_pct(s['best_test_acc'])} ({s['best_epoch']}) | {val}"
            f"{100 * s['generalization_gap']:.2f} | {s['final_test_loss']:.4f} | {seconds:.0f} s | "
            f"{s['device']}{_stack_note(s)} |"
        )
    for name in FIGURES:
        source = name if embed_from is None else f"data:image/png;base64,{_base64(embed_from / name)}"
        lines += ["", f"![{name.removesuffix('.png')}]({source})"]
    return "\n".join(lines) + "\n"


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def report_order(results) -> list[TrainResult]:
    """Models in the report's order: each setting's variants by value, the baseline last; seeds ascending."""
    return sorted(results, key=lambda t: (variant_of(t.config).order(), t.config.seed))


def report_files(folder: str | Path) -> dict[str, str]:
    """SHA-256 of every regular file in a report folder, by name ({} when there is no folder)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return {}
    return {p.name: hashlib.sha256(read_regular(p)).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.is_symlink()}  # fmt: skip


def write_report(
    run_dir: Path,
    results: list[TrainResult],
    data: DataInfo,
    samples: tuple[np.ndarray, np.ndarray],
    class_names: list[str],
    tables: Tables,
) -> tuple[Path, str]:
    """Write every report file into a temp folder, then rename it to `run_dir` (never half-written).

    Returns (run_dir, markdown). An existing `run_dir` is replaced.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    # The pid in the temp name lets a later run tell a crashed writer's leftovers from a live one's.
    tmp = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.tmp-{os.getpid()}-"))
    try:
        write_table(tables.per_epoch, PER_EPOCH_SCHEMA, tmp / "per_epoch.parquet")
        write_table(tables.summary, SUMMARY_SCHEMA, tmp / "summary.parquet")
        write_table(tables.per_class, PER_CLASS_SCHEMA, tmp / "per_class.parquet")
        write_table(tables.confusion, CONFUSION_SCHEMA, tmp / "confusion.parquet")
        write_table(tables.statistics, STATISTICS_SCHEMA, tmp / "statistics.parquet")
        # Class names come from the data's batches.meta: plain text, never mathtext ('$...$').
        with plt.rc_context({"text.parse_math": False, "text.usetex": False}):
            title = report_title(tables.summary, data.provenance)
            plot_decisions(tables.summary, title, tmp / "decisions.png", tables.design, tables.comparisons)
            plot_comparison(results, title, tmp / "comparison.png")
            plot_samples(*samples, class_names, f"Training images — {data.provenance}", tmp / "samples.png")
        markdown = markdown_summary(tables, data, run_dir, embed_from=tmp)
        (tmp / "summary.md").write_text(markdown_summary(tables, data, run_dir))
        os.chmod(tmp, 0o755)
        # Swap under a lock: two identical runs finishing together must not interleave the swap.
        with FileLock(str(run_dir.parent / f".{run_dir.name}.lock")):
            remove_dead_leftovers(run_dir.parent, f".{run_dir.name}.*-*")
            if run_dir.exists():
                old = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}")
                os.replace(run_dir, old)
                os.replace(tmp, run_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir, markdown
