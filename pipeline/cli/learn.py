"""``agnsurvey train`` and ``evaluate``: the cube and labels → a model → its threshold and report."""

from __future__ import annotations

import argparse

from pipeline.cli import options
from pipeline.cli.summary import print_summary
from pipeline.config import build
from pipeline.learn.args import MODEL_NAMES, EvaluateArgs, TrainArgs
from storage.manifest import Manifest


def add_parsers(stages: argparse._SubParsersAction) -> None:
    """The learning phase's stages: ``train`` and ``evaluate``."""
    train = stages.add_parser(
        "train",
        help="WS/cube.zarr + WS/labels/ -> WS/models/NAME/: train a CNN, a checkpoint per epoch (resumable)",
        description="Train a model on the train split (ok cutouts, label 0 SF / 1 AGN), validating on the val split "
        "after every epoch (loss, accuracy, ROC AUC). Adam, binary cross-entropy. Re-running the same command resumes "
        "after the last finished epoch; a larger --epochs continues. In this process by default (all visible GPUs, "
        "else the CPU); with --cluster or --workers, one training process per Dask worker (data-parallel, JAX).",
    )
    options.workspace_arg(train)
    train.add_argument("--model", choices=MODEL_NAMES, help="architecture: paper (default, the paper's CNN) or "
                       "resnet18 (the stronger baseline)")  # fmt: skip
    train.add_argument("--name", help="model directory WS/models/NAME (default: the model's name)")
    train.add_argument("--epochs", type=int, help="epochs in all (default 10); more than done continues training")
    train.add_argument("--batch-size", type=int, help="images per step over all devices (default 64)")
    train.add_argument("--lr", type=float, help="Adam learning rate (default 0.001)")
    train.add_argument("--precision", choices=("float32", "mixed_bfloat16"), help="compute precision (default float32)")
    train.add_argument("--devices", type=int, help="devices of this node (default: every visible GPU, else 1 CPU)")
    train.add_argument("--accelerator", choices=("auto", "gpu", "cpu"),
                       help="auto (default): GPUs if any; gpu: fail without one; cpu: --devices logical CPU devices")
    train.add_argument("--composites", choices=("exclude", "agn"), help="three-class labels: drop composites "
                       "(default) or count them as AGN")  # fmt: skip
    train.add_argument("--class-weight", choices=("none", "balanced"), help="balanced: both classes weigh the same")
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="no random flips / 90-degree rotations of training images")  # fmt: skip
    train.add_argument("--shuffle-buffer", type=int, help="images mixed in memory (default 4096, ~49 KB each)")
    train.add_argument("--seed", type=int, help="initial weights, data order and augmentation (default 0)")
    train.add_argument("--keep-checkpoints", type=int, metavar="K",
                       help="keep the last K epoch checkpoints and the best (lowest val loss); default 3")  # fmt: skip
    train.add_argument("--restart", action="store_true", default=None, help="discard the model directory, train anew")
    train.set_defaults(handler=_train, needs_cluster=False)

    evaluate = stages.add_parser(
        "evaluate",
        help="WS/models/NAME/ -> WS/reports/: threshold on val, metrics on test, plots, report.md",
        description="Choose the threshold on the validation split (never the test split), store it in "
        "WS/models/NAME/threshold.json for scoring, and measure the test split: accuracy, balanced accuracy, ROC and "
        "PR AUC, precision, recall, F1, confusion matrix (AGN = positive), also at 0.5 and the paper's 0.3; "
        "beside the paper's and Guo et al. 2022's numbers.",
    )
    options.workspace_arg(evaluate)
    evaluate.add_argument("--model", help="model directory name under WS/models/ (default paper)")
    evaluate.add_argument("--threshold-policy", help="balanced (default: max balanced accuracy), youden, f1, "
                          "purity:P (lowest threshold with AGN precision >= P), fixed:T")  # fmt: skip
    evaluate.add_argument("--tta", action="store_true", default=None, help="average the 8 flips/rotations")
    evaluate.add_argument("--compare", nargs="+", metavar="WS",
                          help="other workspaces (or metrics.json files) evaluated before: their test metrics and "
                          "pixel kind go beside this run's in report.md (e.g. the same galaxies as --pixels flux)")
    evaluate.set_defaults(handler=_evaluate, needs_cluster=False)


def _train(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.learn.quiet_import import import_keras

    import_keras()
    from pipeline.learn.train import train

    args = build(
        TrainArgs, raw, workspace=ns.workspace, model=ns.model, name=ns.name, epochs=ns.epochs,
        batch_size=ns.batch_size, lr=ns.lr, precision=ns.precision, devices=ns.devices, accelerator=ns.accelerator,
        composites=ns.composites, class_weight=ns.class_weight, augment=ns.augment, shuffle_buffer=ns.shuffle_buffer,
        seed=ns.seed, keep_checkpoints=ns.keep_checkpoints, restart=ns.restart,
    )  # fmt: skip
    processes = ns.cluster or ns.n_workers or raw.get("cluster", {}).get("spec")
    if processes:  # one training process per Dask worker
        ns.needs_cluster = True
    return [print_summary("train", train(args, client=client() if processes else None))]


def _evaluate(ns: argparse.Namespace, raw: dict, client: options.ClientFactory) -> list[Manifest]:
    from pipeline.learn.quiet_import import import_keras

    import_keras()
    from pipeline.learn.evaluate import evaluate

    args = build(EvaluateArgs, raw, workspace=ns.workspace, model=ns.model,
                 threshold_policy=ns.threshold_policy, tta=ns.tta, compare=ns.compare)  # fmt: skip
    return [print_summary("evaluate", evaluate(args))]
