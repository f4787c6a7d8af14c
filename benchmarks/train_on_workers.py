"""Does training on the workers (``[train] on = "workers"``: one JAX process per Dask worker,
gradients combined) reach the test metrics of training in one process, on the same data and seeds?

One offline-sky workspace; per seed, the paper CNN trained once in this process and once on a
LocalCluster of ``--workers`` processes, each evaluated on the same test split. Prints a table and
writes JSON to benchmarks/results/ (test ROC AUC, accuracy, seconds per training).

    python benchmarks/train_on_workers.py --n 3000 --epochs 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _machine import machine_info, print_table, write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="galaxies in the offline sky")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (training processes)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    machine = machine_info()

    from distributed import Client, LocalCluster

    from pipeline.config import run_args
    from pipeline.learn.args import EvaluateArgs, TrainArgs
    from pipeline.learn.evaluate import evaluate
    from pipeline.learn.train import train
    from pipeline.run import run_pipeline

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        run_pipeline(run_args({"workspace": str(ws), "sky": {"n": args.n, "seed": 4}}, until="fetch"))
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0") as cluster, Client(cluster) as client:  # fmt: skip
            for seed in args.seeds:
                for on in ("driver", "workers"):
                    name = f"{on}-{seed}"
                    started = time.monotonic()
                    train(TrainArgs(workspace=ws, name=name, epochs=args.epochs, batch_size=args.batch_size,
                                    seed=seed), client=client if on == "workers" else None)  # fmt: skip
                    seconds = time.monotonic() - started
                    evaluate(EvaluateArgs(workspace=ws, model=name))
                    test = json.loads((ws / "reports" / "metrics.json").read_text())["test"]
                    results.append({"seed": seed, "on": on, "seconds": seconds, "roc_auc": test["roc_auc"],
                                    "accuracy": test["accuracy"], "n_test": test["n"]})  # fmt: skip
    for on in ("driver", "workers"):
        aucs = [r["roc_auc"] for r in results if r["on"] == on]
        secs = [r["seconds"] for r in results if r["on"] == on]
        rows.append({"on": on, "seeds": len(aucs), "test ROC AUC": " ".join(f"{a:.3f}" for a in aucs),
                     "mean": f"{statistics.mean(aucs):.3f}",
                     "sd": f"{statistics.stdev(aucs):.3f}" if len(aucs) > 1 else "-",
                     "s per training": f"{statistics.mean(secs):.0f}"})  # fmt: skip
    print_table(rows, ["on", "seeds", "test ROC AUC", "mean", "sd", "s per training"])
    path = write_results("train_on_workers", {"parameters": vars(args), "runs": results}, machine)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
