"""Stage ``evaluate``: a trained model → threshold (chosen on validation), test metrics, report.

The threshold is chosen on the **validation** split by a policy (default: the maximum balanced
accuracy) and stored in ``WS/models/NAME/threshold.json`` for scoring; the test split is scored
after it is fixed, and its labels are used only to measure. AGN (label 1) is the positive class.

```
WS/reports/ metrics.json  predictions.parquet  roc.png  pr.png  confusion.png  gallery.png  report.md
```
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError, WorkspaceError
from pipeline.learn import metrics, plots
from pipeline.learn.args import EvaluateArgs, parse_policy
from pipeline.learn.modeldir import TRAINED_ON, load_model, read_json, read_state
from pipeline.learn.pixels import check_kind, cube_kind, model_file_kind
from pipeline.learn.rows import Rows, select_rows
from pipeline.stage import RunContext, Step, locked, writing
from storage.cube import OLD_CUBE_ATTRS, open_cube
from storage.manifest import Manifest, atomic_file, file_checksum, write_json_atomic

PAPER = {"name": "the paper (its CNN)", "n": 141_305, "threshold": 0.3, "accuracy": 0.781, "roc_auc": 0.85,
         "precision": 0.678, "recall": 0.748, "f1": 0.711,
         "note": "threshold picked on ~20 test images; positive class not stated"}  # fmt: skip
GUO_2022 = {"name": "Guo, Wu & Sharon 2022 (ResNet-18)", "n": 210_000, "accuracy": 0.894, "precision": 0.738,
            "recall": 0.765, "f1": 0.750, "note": "SDSS images; composites excluded; S/N > 3"}  # fmt: skip
FIXED_THRESHOLDS = (0.5, 0.3)  # the usual default and the paper's
GALLERY_COLUMNS = 6


def evaluate(args: EvaluateArgs) -> Manifest:
    """Choose the threshold on validation, measure on test, write the report; returns the manifest."""
    ws = args.workspace
    kept = ("the model's threshold.json and WS/reports/metrics.json are as they were (they are written last; other "
            "report files may be new)")
    with writing(ws, "reports", "evaluate", kept=kept, reads=("labels", "cube")), locked(ws, f"models/{args.model}"):
        return _evaluate(args)


def _evaluate(args: EvaluateArgs) -> Manifest:
    ws = args.workspace
    directory = ws.models / args.model
    model_path = directory / "model.keras"
    if not model_path.exists():
        trained = sorted(p.parent.name for p in ws.models.glob("*/model.keras")) if ws.models.exists() else []
        hint = f" (trained here: {', '.join(trained)})" if trained else ""
        raise WorkspaceError(
            f"{directory} has no trained model{hint}; run `agnsurvey train --workspace {ws.root} --name {args.model}` "
            "first, or pass --model NAME"
        )

    trained_with = read_json(directory / "args.json")["arguments"]
    splits = select_rows(ws, trained_with.get("composites", "exclude"))
    _check_unseen(directory, splits)
    for name in ("val", "test"):
        n_sf, n_agn = splits[name].counts()
        if min(n_sf, n_agn) == 0:
            raise DataError(
                f"the {name} split has {n_sf} star-forming and {n_agn} AGN galaxies with an ok cutout: both classes "
                "are needed to choose a threshold and measure; fetch more cutouts or ingest a larger catalog"
            )

    compared = [read_compared(path) for path in args.compare]  # before any work: a wrong path costs nothing
    cube = open_cube(ws.cube, mode="r")
    check_kind(model_file_kind(model_path), model_path, cube_kind(cube), ws.cube)
    model = load_model(model_path, fix=f"train it again: `agnsurvey train --workspace {ws.root} --name {args.model} "
                                       "--restart`")  # fmt: skip
    expects = tuple(model.inputs[0].shape[1:3])
    if expects != (cube.layout.image_size,) * 2:
        raise DataError(
            f"{model_path} takes {expects[0]}-pixel images but {ws.cube} holds {cube.layout.image_size}-pixel ones "
            f"(fetched again with another --image-size); train it again (`agnsurvey train --name {args.model} "
            "--restart`) or fetch with its image size"
        )
    manifest = Manifest(stage="evaluate", parameters={"model": args.model, "threshold_policy": args.threshold_policy,
                                                      "tta": args.tta})  # fmt: skip
    manifest.inputs = [{"path": str(model_path), "checksum": file_checksum(model_path)}]

    from pipeline.learn.inference import predict_rows

    n_val = len(splits["val"])  # val and test in one pass over the cube
    scores = predict_rows(model, cube, np.r_[splits["val"].cube_row, splits["test"].cube_row], args.batch_size,
                          args.tta)  # fmt: skip
    p_val, p_test = scores[:n_val], scores[n_val:]
    policy, value = parse_policy(args.threshold_policy)
    try:
        threshold = metrics.choose_threshold(splits["val"].label, p_val, policy, value)
    except ValueError as exc:
        raise DataError(f"--threshold-policy {args.threshold_policy}: {exc}; ask for a lower purity") from None

    result = measure(splits, p_val, p_test, threshold)
    result |= {"model": args.model, "policy": args.threshold_policy, "tta": args.tta, "paper": PAPER,
               "guo2022": GUO_2022, "training": _training_summary(directory, trained_with),
               "pixels": {"pixels": cube.pixels, "bands": cube.bands, "workspace": str(ws.root),
                          "source": cube.group.attrs.get("source", OLD_CUBE_ATTRS["source"])},
               "compared": compared}  # fmt: skip
    reports = ws.reports
    reports.mkdir(parents=True, exist_ok=True)
    _write_predictions(reports / "predictions.parquet", splits, p_val, p_test)
    figures = _figures(reports, splits, p_val, p_test, result, cube)
    with atomic_file(reports / "report.md") as tmp:
        tmp.write_text(report_markdown(result, figures))
    write_json_atomic(reports / "metrics.json", result)  # last: the report's files are in place
    write_json_atomic(directory / "threshold.json", {
        "threshold": threshold, "policy": args.threshold_policy, "chosen_on": "val", "n_val": len(p_val),
        "tta": args.tta, "model_checksum": manifest.inputs[0]["checksum"]})  # fmt: skip

    test = result["test"]
    manifest.rows_in = len(p_val) + len(p_test)
    manifest.rows_out = len(p_test)
    manifest.extra = {"threshold": threshold, "policy": args.threshold_policy,
                      "test": {k: test[k] for k in ("n", "roc_auc", "pr_auc", "accuracy", "balanced_accuracy",
                                                    "precision", "recall", "f1")},
                      "paper": {k: PAPER[k] for k in ("n", "roc_auc", "accuracy", "precision", "recall", "f1")},
                      }  # fmt: skip
    manifest.outputs = {"metrics": str(reports / "metrics.json"), "report": str(reports / "report.md"),
                        "threshold": str(directory / "threshold.json"),
                        "plots": [str(p) for p in figures.values()]}  # fmt: skip
    manifest.finish()
    ws.write_manifest("evaluate", manifest.to_dict())
    return manifest


def _check_unseen(directory: Path, splits: dict[str, Rows]) -> None:
    """Refuse to choose a threshold or measure on galaxies the model trained on (the labels were
    remade with another split or scheme since): its numbers would be optimistic."""

    path = directory / TRAINED_ON
    if not path.exists():
        raise WorkspaceError(f"{directory} does not say which galaxies it trained on ({path.name}); train it again")
    trained = np.load(path)
    for name in ("val", "test"):
        seen = np.isin(splits[name].objid, trained)
        if seen.any():
            raise DataError(
                f"{int(seen.sum()):,} galaxies of the {name} split were in this model's training split (the labels "
                f"were remade with another --split or --scheme since it trained); relabel as it was trained, or "
                f"train it again (`agnsurvey train --name {directory.name} --restart`)"
            )


def measure(splits: dict[str, Rows], p_val: np.ndarray, p_test: np.ndarray, threshold: float) -> dict[str, Any]:
    """The metrics of both splits at ``threshold`` (chosen beforehand), at 0.5 and 0.3, the
    threshold-free AUCs, and the majority-class baseline (the train split's majority class)."""
    majority = int(splits["train"].label.mean() >= 0.5) if len(splits["train"]) else 0
    out: dict[str, Any] = {"threshold": threshold, "positive_class": "AGN (label 1)"}
    for name, p in (("val", p_val), ("test", p_test)):
        y = splits[name].label
        n_sf, n_agn = splits[name].counts()
        baseline = metrics.at_threshold(y, np.full(len(y), float(majority)), 0.5)
        out[name] = {"n": len(y), "n_sf": n_sf, "n_agn": n_agn, **metrics.at_threshold(y, p, threshold),
                     "roc_auc": metrics.roc_auc(y, p), "pr_auc": metrics.pr_auc(y, p),
                     "majority_baseline": {"predicts": "AGN" if majority else "SF", **baseline}}  # fmt: skip
        for fixed in FIXED_THRESHOLDS:
            out[name][f"at_{fixed}"] = metrics.at_threshold(y, p, fixed)
    return out


def _training_summary(directory: Path, arguments: dict) -> dict[str, Any]:

    state = read_state(directory)
    seconds = sum(h.get("seconds") or 0 for h in state["history"])
    return {"model": arguments.get("model"), "epochs": state["epochs_done"], "seconds": round(seconds, 1),
            "batch_size": arguments.get("batch_size"), "augment": arguments.get("augment"),
            "class_weight": arguments.get("class_weight")}  # fmt: skip


def _write_predictions(path: Path, splits: dict[str, Rows], p_val: np.ndarray, p_test: np.ndarray) -> None:
    frame = pd.concat(
        [pd.DataFrame({"objid": splits[name].objid, "cube_row": splits[name].cube_row, "split": name,
                       "label": splits[name].label.astype(np.int8), "p_agn": p})
         for name, p in (("val", p_val), ("test", p_test))],  # fmt: skip
        ignore_index=True,
    )
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)


def _figures(reports: Path, splits: dict[str, Rows], p_val: np.ndarray, p_test: np.ndarray, result: dict,
             cube: Any) -> dict[str, Path]:  # fmt: skip
    threshold = result["threshold"]
    roc, pr, marks = {}, {}, {}
    for name, p in (("val", p_val), ("test", p_test)):
        y = splits[name].label
        fpr, tpr, _ = metrics.roc_curve(y, p)
        roc[name] = (fpr, tpr, result[name]["roc_auc"])
        precision, recall, _ = metrics.pr_curve(y, p)
        pr[name] = (precision, recall, result[name]["pr_auc"])
    (tn, fp), (fn, tp) = result["test"]["confusion"]
    marks[f"test at {threshold:.3f}"] = (fp / max(tn + fp, 1), tp / max(tp + fn, 1))
    y_test = splits["test"].label
    return {
        "roc": plots.roc_plot(roc, marks, reports / "roc.png"),
        "pr": plots.pr_plot(pr, float(y_test.mean()), reports / "pr.png"),
        "confusion": plots.confusion_plot(result["test"]["confusion"], threshold, reports / "confusion.png"),
        "gallery": plots.gallery_plot(_gallery(splits["test"], p_test, threshold, cube), reports / "gallery.png"),
    }


def _gallery(rows: Rows, p: np.ndarray, threshold: float, cube: Any) -> dict[str, list]:
    """Test cutouts: the most confident AGN and SF, and the worst mistakes each way."""
    y = rows.label.astype(bool)
    picks = {
        "most confident AGN": np.flatnonzero(y)[np.argsort(-p[y])],
        "most confident SF": np.flatnonzero(~y)[np.argsort(p[~y])],
        "worst false AGN": np.flatnonzero(~y & (p >= threshold))[np.argsort(-p[~y & (p >= threshold)])],
        "worst missed AGN": np.flatnonzero(y & (p < threshold))[np.argsort(p[y & (p < threshold)])],
    }
    panels = {}
    for title, positions in picks.items():
        positions = positions[:GALLERY_COLUMNS]
        images = cube.read_rows(rows.cube_row[positions]) if len(positions) else []
        panels[title] = [(images[i], float(p[k]), int(rows.label[k]), int(rows.objid[k]))
                         for i, k in enumerate(positions)]  # fmt: skip
    return panels


COMPARED = ("n", "roc_auc", "pr_auc", "accuracy", "balanced_accuracy")


def read_compared(path: str) -> dict[str, Any]:
    """One ``--compare`` entry: a workspace's (or a file's) last ``metrics.json``, cut to what the
    report's comparison shows; ConfigError naming the path and the fix when there is none."""
    given = Path(path)
    file = given / "reports" / "metrics.json" if given.is_dir() else given
    try:
        metrics = json.loads(file.read_text())
        test = metrics["test"]
        row = {"from": str(given), "model": metrics["model"], **{k: test[k] for k in COMPARED}}
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"--compare {path}: {file} is not an evaluation's metrics.json; run `agnsurvey evaluate --workspace "
            f"{given if given.is_dir() else '...'}` first, or give a workspace that has been evaluated"
        ) from None
    old = {k: OLD_CUBE_ATTRS[k] for k in ("pixels", "bands", "source")}
    return row | old | (metrics.get("pixels") or {})


def report_markdown(result: dict[str, Any], figures: dict[str, Path]) -> str:
    """``report.md``: this run beside the paper and Guo et al. 2022, with sample sizes."""
    test, train = result["test"], result.get("training", {})
    rows = [
        ("this run, chosen threshold", test["n"], result["threshold"], test),
        ("this run, threshold 0.5", test["n"], 0.5, test["at_0.5"]),
        ("this run, threshold 0.3 (the paper's)", test["n"], 0.3, test["at_0.3"]),
        ("majority class (" + test["majority_baseline"]["predicts"] + ")", test["n"], None, test["majority_baseline"]),
        (PAPER["name"], PAPER["n"], PAPER["threshold"], PAPER),
        (GUO_2022["name"], GUO_2022["n"], None, GUO_2022),
    ]

    def cell(values: dict, key: str) -> str:
        return f"{values[key]:.3f}" if isinstance(values.get(key), int | float) else "–"

    lines = [
        f"# {result['model']}: AGN vs star-forming from images",
        "",
        f"Positive class: AGN (label 1). Threshold {result['threshold']:.3f}, chosen on the validation split "
        f"({result['val']['n']:,} galaxies) by the `{result['policy']}` policy; the test split "
        f"({test['n']:,} galaxies: {test['n_sf']:,} SF, {test['n_agn']:,} AGN) was scored only after."
        + (" Scores average the 8 flips/rotations (TTA)." if result.get("tta") else ""),
        "",
        f"Test ROC AUC **{test['roc_auc']:.3f}**, PR AUC (average precision) **{test['pr_auc']:.3f}** "
        f"(a random model's PR AUC is the AGN fraction, {test['n_agn'] / max(test['n'], 1):.3f}).",
        "",
        "| | test galaxies | threshold | accuracy | balanced acc. | ROC AUC | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, threshold, values in rows:
        auc = f"{test['roc_auc']:.3f}" if values is test else cell(values, "roc_auc")
        lines.append(f"| {name} | {n:,} | {'–' if threshold is None else f'{threshold:.3f}'} | "
                     f"{cell(values, 'accuracy')} | {cell(values, 'balanced_accuracy')} | {auc} | "
                     f"{cell(values, 'precision')} | {cell(values, 'recall')} | {cell(values, 'f1')} |")  # fmt: skip
    (tn, fp), (fn, tp) = test["confusion"]
    lines += [
        "",
        "The paper's numbers are over its 141,305 galaxies with its threshold picked on ~20 *test* images; Guo et al. "
        "2022 used 210k SDSS galaxies, composites excluded, S/N > 3. Sample sizes differ: compare with care.",
        "",
        f"Confusion matrix (test, threshold {result['threshold']:.3f}): TN {tn:,} · FP {fp:,} · FN {fn:,} · TP {tp:,}.",
        "",
        f"Training: {train.get('model')}, {train.get('epochs')} epochs, batch {train.get('batch_size')}, "
        f"augmentation {'on' if train.get('augment') else 'off'}, class weights {train.get('class_weight')}, "
        f"{train.get('seconds', 0):.0f} s.",
        "",
    ]
    lines += _comparison(result)
    lines += [f"![{name}]({path.name})" for name, path in figures.items()]
    return "\n".join(lines) + "\n"


def _comparison(result: dict[str, Any]) -> list[str]:
    """This run's pixel kind, and (``--compare``) the other runs' test metrics beside its own."""
    px = result.get("pixels", {})
    kind = {k: px.get(k, OLD_CUBE_ATTRS[k]) for k in ("pixels", "bands", "source")}
    lines = [f"Pixels: {kind['pixels']} ({kind['bands']}, from {kind['source']}).", ""]
    if not result.get("compared"):
        return lines
    this = {"from": "this run", "model": result["model"], **kind, **{k: result["test"][k] for k in COMPARED}}
    lines += ["Beside other runs (their last evaluation; same galaxies only if their workspaces were made alike):", "",
              "| run | model | pixels | bands | source | test galaxies | ROC AUC | PR AUC | accuracy | balanced acc. |",
              "|---|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for row in [this, *result["compared"]]:
        kind = " | ".join(str(row.get(k, OLD_CUBE_ATTRS[k])) for k in ("pixels", "bands", "source"))
        lines.append(f"| {row['from']} | {row['model']} | {kind} | {row['n']:,} | {row['roc_auc']:.3f} | "
                     f"{row['pr_auc']:.3f} | {row['accuracy']:.3f} | {row['balanced_accuracy']:.3f} |")  # fmt: skip
    return lines + [""]


# --- as a stage of `agnsurvey run` ------------------------------------------------------------------


def _run_settings(args: EvaluateArgs, run: RunContext) -> tuple[dict, list]:
    """The threshold policy and TTA, and the model's checksum: a retrained model is evaluated again."""
    path = args.workspace.models / args.model / "model.keras"
    checksum = file_checksum(path) if path.exists() else ""
    return {"policy": args.threshold_policy, "tta": args.tta}, [run.upstream, checksum]


def _result(manifest: dict) -> str:
    extra = manifest.get("extra", {})
    test, paper = extra.get("test") or {}, extra.get("paper") or {}
    if not test:
        return ""
    return (f"test AUC {test.get('roc_auc', 0):.3f} (paper {paper.get('roc_auc', '?')}), accuracy "
            f"{test.get('accuracy', 0):.3f} (paper {paper.get('accuracy', '?')}), threshold "
            f"{extra.get('threshold', 0):.3f}")  # fmt: skip


STEP = Step(
    "evaluate",
    settings=_run_settings,
    complete=lambda args, run, made: (args.workspace.models / args.model / "threshold.json").exists(),
    execute=lambda args, run, before, fingerprint, tokens: evaluate(args),
    result=_result,
)
