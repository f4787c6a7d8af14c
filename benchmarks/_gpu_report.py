"""The table, the summary rows and the notes of ``gpu_check.py``, from the results it gathered.

Every row puts a rate beside a reference measured in the same run: training from the cube beside
the in-memory ceiling of the same model and devices; the all-device ceiling beside N times the
one-device one (data-parallel scaling, batch per device fixed); scoring beside the in-memory
scoring ceiling (times the workers, for the cluster); the batch reader beside the rate it must
deliver to keep the paper CNN's devices busy. Rates are images per second.
"""

from __future__ import annotations

from typing import Any

from _machine import summary_row  # type: ignore[import-not-found]

COLUMNS = ["measure", "devices", "work", "img/s", "reference (same run)", "ref img/s", "ratio", "note"]
RIGHT = ["img/s", "ref img/s", "ratio"]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _row(measure: str, devices: str, work: str, rate: float | None, reference: str, reference_rate: float | None,
         note: str = "") -> dict[str, str]:  # fmt: skip
    ratio = f"{rate / reference_rate:.2f}" if rate is not None and reference_rate else "-"
    return {"measure": measure, "devices": devices, "work": work, "img/s": _rate(rate),
            "reference (same run)": reference, "ref img/s": _rate(reference_rate), "ratio": ratio,
            "note": note}  # fmt: skip


def scaling(train: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model measured on one device and on N > 1: the N-device ceiling over N x the one-device one."""
    out = []
    for many in (t for t in train if t["devices"] > 1):
        one = next((t for t in train if t["model"] == many["model"] and t["devices"] == 1), None)
        if one is not None:
            ideal = many["devices"] * one["ceiling"]["images_per_s"]
            out.append({"model": many["model"], "devices": many["devices"], "placement": many["placement"],
                        "ceiling_images_per_s": many["ceiling"]["images_per_s"], "ideal_images_per_s": ideal,
                        "efficiency": round(many["ceiling"]["images_per_s"] / ideal, 3)})  # fmt: skip
    return out


def paper_ceiling(train: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The paper CNN's training on the most devices measured (the rate a reader must feed)."""
    papers = [t for t in train if t["model"] == "paper"]
    return max(papers, key=lambda t: t["devices"], default=None)


def rows(result: dict[str, Any], cores: int) -> list[dict[str, str]]:
    """The one table: training, scaling, scoring on one device and on the cluster, the reader, and
    what was skipped."""
    out = []
    for t in result["train"]:
        out.append(_row(f"train {t['model']} ({t['policy']})", t["placement"], f"{t['steps']} x {t['batch_size']}",
                        t["pipeline"]["images_per_s"], "in-memory ceiling", t["ceiling"]["images_per_s"],
                        f"compile + warm-up {t['warmup_and_compile_s']:.0f} s"))  # fmt: skip
    for s in result["scaling"]:
        out.append(_row(f"train {s['model']} scaling", s["placement"], "ceiling, batch per device fixed",
                        s["ceiling_images_per_s"], f"{s['devices']} x 1-device ceiling", s["ideal_images_per_s"]))
    one = result["score"]["one_device"]
    if one:
        warm, cold = one["score"]["warm"], one["score"]["cold"]
        out.append(_row("score from cube (score stage, 1 process)", one["placement"],
                        f"{one['images']:,} images, batch {one['batch_size']}", warm["images_per_s"],
                        "in-memory ceiling", one["ceiling"]["images_per_s"],
                        f"cold {cold['images_per_s']:,.0f} img/s (model load, compile)"))  # fmt: skip
    out.append(_cluster_row(result["score"]["cluster"], one))
    top = paper_ceiling(result["train"])
    for run in (result["reader"] or {}).get("runs", []):
        threads = f"{run['readers']} reader thread{'s' if run['readers'] > 1 else ''}"
        out.append(_row(f"batch reader alone ({threads})", f"CPU, {cores} cores", f"{run['batches']} x "
                        f"{run['batch_size']}", run["images_per_s"], f"paper ceiling, {top['placement']}" if top else
                        "-", top["ceiling"]["images_per_s"] if top else None,
                        f"{run['images_per_core_s']:,.0f} img/s per busy core"))  # fmt: skip
    for skipped in result["skipped"]:
        out.append(_row(skipped["what"], "-", "-", None, "-", None, f"skipped: {skipped['reason']}"))
    return out


def _cluster_row(cluster: dict[str, Any], one: dict[str, Any] | None) -> dict[str, str]:
    measure = f"score on {cluster['kind']} (score stage)"
    if cluster["status"] == "skipped":
        return _row(measure, "-", "-", None, "-", None, f"skipped: {cluster['reason']}")
    workers, scored = cluster["workers"], cluster.get("score")
    reference = one["ceiling"]["images_per_s"] * workers if one else None
    if scored is None:  # it failed before it scored
        return _row(measure, f"{workers} workers", "-", None, "-", None, f"failed: {cluster['reason']}")
    note = f"cold {scored['cold']['images_per_s']:,.0f} img/s"
    if cluster["status"] != "ran":
        note = f"{cluster['status']}: {cluster['reason']}; {note}"
    return _row(measure, f"{workers} workers", f"{scored['warm']['images']:,} images", scored["warm"]["images_per_s"],
                f"{workers} x 1-process in-memory ceiling", reference, note)  # fmt: skip


def summary(result: dict[str, Any], cores: int) -> list[dict[str, Any]]:
    """The rows ``agnsurvey bench`` combines: each rate beside its same-run reference."""
    out = [summary_row(f"gpu: train {t['model']} ({t['placement']}, {t['policy']})",
                       f"{t['steps']} batches of {t['batch_size']}", t["pipeline"]["images_per_s"], "img/s",
                       "in-memory ceiling", t["ceiling"]["images_per_s"]) for t in result["train"]]  # fmt: skip
    out += [summary_row(f"gpu: train {s['model']} scaling ({s['placement']})", "in-memory ceiling",
                        s["ceiling_images_per_s"], "img/s", f"{s['devices']} x 1-device ceiling",
                        s["ideal_images_per_s"]) for s in result["scaling"]]  # fmt: skip
    one, cluster = result["score"]["one_device"], result["score"]["cluster"]
    if one:
        out.append(summary_row(f"gpu: score from cube ({one['placement']}, warm)", f"{one['images']:,} images",
                               one["score"]["warm"]["images_per_s"], "img/s", "in-memory ceiling",
                               one["ceiling"]["images_per_s"]))  # fmt: skip
    if one and cluster["status"] == "ran":
        warm = cluster["score"]["warm"]
        out.append(summary_row(f"gpu: score on {cluster['kind']} ({cluster['workers']} workers, warm)",
                               f"{warm['images']:,} images", warm["images_per_s"], "img/s",
                               f"{cluster['workers']} x 1-process in-memory ceiling",
                               cluster["workers"] * one["ceiling"]["images_per_s"]))  # fmt: skip
    top, reader = paper_ceiling(result["train"]), result["reader"]
    if top and reader:
        best = reader["runs"][-1]
        out.append(summary_row(f"gpu: batch reader per core ({best['readers']} threads)", "images per CPU second",
                               best["images_per_core_s"], "img/s per core",
                               f"paper ceiling on {top['placement']} / {cores} cores",
                               top["ceiling"]["images_per_s"] / cores))  # fmt: skip
    return out


def notes(result: dict[str, Any], cores: int) -> list[str]:
    """The lines printed below the table."""
    devices = result["devices"]
    out = [f"devices: {', '.join(devices.get('names', [])) or '?'} ({devices.get('backend')}, policy "
           f"{devices.get('policy')})",
           "ceiling = model.fit on the same batches held in memory; train from the cube = CubeBatches over the cube "
           "on disk feeding the same compiled model, as `agnsurvey train` reads it (best epoch of each)"]  # fmt: skip
    top, reader = paper_ceiling(result["train"]), result["reader"]
    if top and reader:
        per_core = reader["runs"][-1]["images_per_core_s"]
        out.append(f"to feed the paper CNN on {top['placement']} at its ceiling ({top['ceiling']['images_per_s']:,.0f} "
                   f"img/s) the reader needs {top['ceiling']['images_per_s'] / per_core:.1f} busy cores "
                   f"(this machine: {cores})")  # fmt: skip
    cluster = result["score"]["cluster"]
    if cluster.get("worker_devices"):
        seen = sorted({d["device"] for d in cluster["worker_devices"].values()})
        out.append(f"{cluster['kind']} workers scored on: {', '.join(seen)}")
    if result["dry_run"]:
        out.append("DRY RUN on the CPU (tiny sizes, logical CPU devices, LocalCluster workers): it checks the code "
                   "paths; its numbers measure nothing. Run without --dry-run on a machine with NVIDIA GPUs.")
    return out
