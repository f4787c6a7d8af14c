"""How separable the offline sky's AGN hosts are from their images: test ROC AUC of three classifiers.

The offline sky (:mod:`pipeline.synthetic.render`) draws a galaxy's appearance from distributions
that move with its BPT class but overlap widely, so that a classifier trained on the cutouts has
something to learn and cannot be perfect. This script checks where that puts a model:

1. catalog rows of sky ``--seed`` (:func:`pipeline.synthetic.catalog.generate_rows`) with all four
   line fluxes finite and > 0, the first ``--n`` of them;
2. the label of the paper's BPT rule, with x = log10([NII]/Hα), y = log10([OIII]/Hβ):
   AGN = 1 unless (y < 0.61 / (x - 0.05) + 1.3 and x < -0.1), star-forming = 0
   (checked against :func:`pipeline.catalog.bpt.bpt_class`, scheme "paper");
3. each galaxy rendered at 250 × 250 pixels and the standard scale (PETROTH90 × 1.5 × 2 / 250
   arcsec/pixel, no neighbours), its appearance weight from
   :func:`~pipeline.synthetic.render.agn_weight_from_fluxes`, then resized to ``--px`` pixels with
   Pillow's LANCZOS filter (as the fetch stage resizes cutouts);
4. a 75 / 25 train / test split (a permutation from a fixed seed, :data:`SPLIT_SEED`);
5. test ROC AUC of:

   - **logistic regression** on five hand features: the mean z/g and z/r colours inside r < px/6,
     the concentration (light inside r < px/24 over light inside r < px/6), the central 2 × 2 peak
     and the central z/g colour (plus the colour-only and concentration+peak-only subsets);
   - **gradient boosting** (scikit-learn ``HistGradientBoostingClassifier``) on radial profiles:
     the mean of each band in 8 annuli out to px/2, and each band's maximum and 99th percentile;
   - **a small CNN** (Keras: 4 convolution layers, random flips, global average pooling, dropout),
     Adam, up to ``--epochs`` epochs, early stopping on the AUC of a validation slice (the last
     10 % of the training set, patience 6, best weights restored);
   - as a check (not a model), the renderer's input, the appearance weight (0 / 0.5 / 1), as a score.
     On the synthetic catalog it is a function of the label (weight 0 exactly for label 0), so
     this AUC is 1.000: everything a model misses is the renderer's deliberate scatter (the
     renderer's own notes put the ceiling, its latent type as the score, at ~0.95).

Target: a good CNN should reach a test AUC of 0.85-0.93. Below that, the images carry too little
of the class for the pipeline's training to be a meaningful test; above it, the offline sky is
trivially separable (real Legacy Surveys cutouts are not). The renderer's latent-type scatter is
the knob that moves this (``_TYPE_SCATTER`` in ``pipeline/synthetic/render.py``).

    python benchmarks/render_auc.py [--n 6000] [--seed 3] [--epochs 30] [--px 64] [--no-cnn]

At the defaults it takes about 5 minutes on 2 cores (the CNN is most of it). Prints the AUCs and
writes ``benchmarks/results/render_auc-<timestamp>.json`` (machine info, parameters, class counts,
every AUC, the CNN's training history, timings).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
from _machine import Table, arg_parser, machine_info, report
from PIL import Image
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline.catalog import bpt
from pipeline.synthetic.catalog import generate_rows
from pipeline.synthetic.render import SKY_COUNTS, Galaxy, agn_weight_from_fluxes, render_field

SIZE = 250  # rendered cutout, pixels
FRAME_RADII = 1.5 * 2  # the cutout spans PETROTH90 × 1.5 on either side of the centre
SPLIT_SEED = 0  # the train / test permutation: fixed, whatever the sky seed
TRAIN_FRACTION = 0.75
VALIDATION_FRACTION = 0.10  # of the training set, for the CNN's early stopping
TARGET_CNN_AUC = (0.85, 0.93)
FLUXES = ("HAFLUX", "N2FLUX", "HBFLUX", "O3FLUX")

now = time.perf_counter


# --------------------------------------------------------------------------------------------------
# Data


def select_galaxies(seed: int, n: int) -> tuple[dict[str, np.ndarray], int]:
    """The first ``n`` rows of sky ``seed`` with all four line fluxes finite and > 0 (float64 fluxes),
    and how many catalog rows that took."""
    stop = 2 * n
    while True:
        rows = generate_rows(seed, 0, stop)
        ha, nii, hb, oiii = (rows[k].astype(np.float64) for k in FLUXES)
        valid = np.isfinite(ha) & np.isfinite(nii) & np.isfinite(hb) & np.isfinite(oiii)
        valid &= (ha > 0) & (nii > 0) & (hb > 0) & (oiii > 0)
        idx = np.flatnonzero(valid)
        if len(idx) >= n:
            break
        stop *= 2
    idx = idx[:n]
    out = {k: rows[k][idx] for k in ("NSAID", "RA", "DEC", "Z", "PETROTH90", "SIM_CLASS")}
    out |= {k: rows[k][idx].astype(np.float64) for k in FLUXES}
    return out, int(idx[-1]) + 1


def paper_label(ha: np.ndarray, nii: np.ndarray, hb: np.ndarray, oiii: np.ndarray) -> np.ndarray:
    """AGN = 1 unless y < 0.61/(x - 0.05) + 1.3 and x < -0.1 (the paper's rule); positive fluxes."""
    x = np.log10(nii / ha)
    y = np.log10(oiii / hb)
    star_forming = (y < 0.61 / (x - 0.05) + 1.3) & (x < -0.1)
    label = (~star_forming).astype(np.int32)
    reference = bpt.bpt_class(x, y, scheme="paper") == bpt.AGN
    if not np.array_equal(label.astype(bool), reference):
        raise RuntimeError("the paper rule here disagrees with pipeline.catalog.bpt.bpt_class(scheme='paper')")
    return label


def render_cutouts(gal: dict[str, np.ndarray], weight: np.ndarray, px: int) -> np.ndarray:
    """(N, px, px, 3) uint8: each galaxy rendered at SIZE pixels and the standard scale, LANCZOS-resized."""
    out = np.empty((len(weight), px, px, 3), np.uint8)
    for i in range(len(weight)):
        radius = float(gal["PETROTH90"][i])
        g = Galaxy(
            objid=int(gal["NSAID"][i]),
            ra=float(gal["RA"][i]),
            dec=float(gal["DEC"][i]),
            radius_arcsec=radius,
            z=float(gal["Z"][i]),
            agn_weight=float(weight[i]),
        )
        image = render_field(g, [], g.ra, g.dec, SIZE, radius * FRAME_RADII / SIZE)
        out[i] = np.asarray(Image.fromarray(image).resize((px, px), Image.LANCZOS))
    return out


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: a permutation from SPLIT_SEED, the first 75 % for training."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_train = int(TRAIN_FRACTION * n)
    return perm[:n_train], perm[n_train:]


# --------------------------------------------------------------------------------------------------
# Features


def radii(px: int) -> np.ndarray:
    """Distance of every pixel from the image centre, pixels."""
    yy, xx = np.mgrid[:px, :px] - (px - 1) / 2.0
    return np.hypot(xx, yy)


def hand_features(X: np.ndarray) -> np.ndarray:
    """(N, 5): z/g and z/r colour inside px/6, concentration, central 2×2 peak, central z/g colour."""
    px = X.shape[1]
    f = X.astype(np.float32) - np.float32(SKY_COUNTS)  # above the sky level
    rr = radii(px)
    inner, mid = rr < px / 24, rr < px / 6
    total = f[:, mid].sum(1) + 1e-3  # (N, 3): R=z, G=r, B=g
    centre = f[:, inner].sum(1)
    c = px // 2

    def log_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.log(np.clip(a, 1, None) / np.clip(b, 1, None))

    return np.column_stack(
        [
            log_ratio(total[:, 0], total[:, 2]),  # mean z/g colour
            log_ratio(total[:, 0], total[:, 1]),  # mean z/r colour
            centre.sum(1) / total.sum(1),  # concentration
            f[:, c - 1 : c + 1, c - 1 : c + 1].mean((1, 2, 3)),  # central peak
            log_ratio(centre[:, 0], centre[:, 2]),  # central z/g colour
        ]
    )


HAND_SUBSETS: dict[str, list[int]] = {
    "logistic regression, 5 hand features": [0, 1, 2, 3, 4],
    "logistic regression, colours only": [0, 1, 4],
    "logistic regression, concentration + peak only": [2, 3],
}


def profile_features(X: np.ndarray, annuli: int = 8) -> np.ndarray:
    """(N, annuli × 3 + 6): mean of each band per annulus out to px/2, each band's max and 99th percentile."""
    px = X.shape[1]
    f = X.astype(np.float32) - np.float32(SKY_COUNTS)
    rr = radii(px)
    edges = np.linspace(0.0, px / 2.0, annuli + 1)
    profile = [f[:, (rr >= a) & (rr < b)].mean(1) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    flat = f.reshape(len(f), -1, 3)
    return np.column_stack([np.concatenate(profile, 1), flat.max(1), np.percentile(flat, 99, axis=1)])


# --------------------------------------------------------------------------------------------------
# Models


def logistic_aucs(feat: np.ndarray, label: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, float]:
    out = {}
    for name, cols in HAND_SUBSETS.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        model.fit(feat[train][:, cols], label[train])
        out[name] = float(roc_auc_score(label[test], model.predict_proba(feat[test][:, cols])[:, 1]))
    return out


def boosting_auc(feat: np.ndarray, label: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Gradient boosting in ONE OpenMP thread: same model (histograms are built per feature), but
    with the default thread count it ran ~100x slower on a busy 2-core machine (spinning threads)."""
    model = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=0)
    with threadpool_limits(limits=1):
        model.fit(feat[train], label[train])
    return float(roc_auc_score(label[test], model.predict_proba(feat[test])[:, 1]))


def cnn(X: np.ndarray, label: np.ndarray, train: np.ndarray, test: np.ndarray, epochs: int) -> dict[str, Any]:
    """Train the small CNN (early stopping on a validation slice of ``train``); test scores and history."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras  # lazily: TensorFlow takes seconds to import and is not needed for --no-cnn
    from keras import layers

    keras.utils.set_random_seed(0)
    px = X.shape[1]
    model = keras.Sequential(
        [
            keras.Input((px, px, 3)),
            layers.Rescaling(1 / 64.0, offset=-0.25),
            layers.RandomFlip("horizontal_and_vertical"),
            layers.Conv2D(32, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(96, 3, activation="relu", padding="same"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, activation="relu", padding="same"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(64, activation="relu"),
            layers.Dropout(0.3),
            layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    n_fit = int((1.0 - VALIDATION_FRACTION) * len(train))
    fit, val = train[:n_fit], train[n_fit:]
    t0 = now()
    history = model.fit(
        X[fit],
        label[fit],
        validation_data=(X[val], label[val]),
        epochs=epochs,
        batch_size=64,
        verbose=2,
        callbacks=[keras.callbacks.EarlyStopping("val_auc", mode="max", patience=6, restore_best_weights=True)],
    )
    train_s = now() - t0
    score = model.predict(X[test], verbose=0).ravel()
    val_auc = [float(v) for v in history.history["val_auc"]]
    return {
        "test_auc": float(roc_auc_score(label[test], score)),
        "scores": score,
        "train_s": train_s,
        "epochs_run": len(val_auc),
        "best_epoch": int(np.argmax(val_auc)) + 1,
        "best_val_auc": max(val_auc),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "params": int(model.count_params()),
        "fit_rows": len(fit),
        "validation_rows": len(val),
        "keras_backend": keras.backend.backend(),
    }


def auc_between(score: np.ndarray, weight: np.ndarray, low: float, high: float) -> float | None:
    """AUC of ``score`` telling appearance weight ``high`` from ``low`` (None if either is absent)."""
    a, b = score[weight == low], score[weight == high]
    if not len(a) or not len(b):
        return None
    return float(roc_auc_score(np.r_[np.zeros(len(a)), np.ones(len(b))], np.r_[a, b]))


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = arg_parser(__doc__)
    parser.add_argument("--n", type=int, default=6000, help="galaxies with four positive fluxes (default 6000)")
    parser.add_argument("--seed", type=int, default=3, help="sky (catalog) seed (default 3)")
    parser.add_argument("--epochs", type=int, default=30, help="most CNN epochs, early stopping (default 30)")
    parser.add_argument("--px", type=int, default=64, help="side the 250 px cutouts are resized to (default 64)")
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN (no TensorFlow needed)")
    args = parser.parse_args(argv)
    if args.n < 40 or args.epochs < 1 or args.px < 16:
        parser.error("--n must be >= 40, --epochs >= 1, --px >= 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info(extra_packages=("scikit-learn", "keras", "tensorflow", "tensorflow-cpu", "pillow"))
    t_start = now()

    gal, scanned = select_galaxies(args.seed, args.n)
    label = paper_label(*(gal[k] for k in FLUXES))
    weight = agn_weight_from_fluxes(*(gal[k] for k in FLUXES), gal["SIM_CLASS"])
    counts = {
        f"label {lab}, weight {w:g}": int(((label == lab) & (weight == w)).sum()) for lab in (0, 1) for w in (0, 0.5, 1)
    }
    print(
        f"{args.n} galaxies (sky seed {args.seed}, first {scanned} catalog rows), "
        f"AGN fraction {label.mean():.3f}; {counts}",
        flush=True,
    )

    t0 = now()
    X = render_cutouts(gal, weight, args.px)
    render_s = now() - t0
    print(f"rendered {SIZE} px and resized to {args.px} px in {render_s:.1f} s", flush=True)

    train, test = split(args.n)
    timings: dict[str, float] = {"render_resize_s": render_s}
    t0 = now()
    aucs = logistic_aucs(hand_features(X), label, train, test)
    timings["logistic_s"] = now() - t0
    t0 = now()
    aucs["gradient boosting, radial profiles"] = boosting_auc(profile_features(X), label, train, test)
    timings["boosting_s"] = now() - t0
    checks = {
        "appearance weight as the score": float(roc_auc_score(label[test], weight[test])),
    }
    cnn_result: dict[str, Any] | None = None
    if not args.no_cnn:
        print(f"training the CNN (up to {args.epochs} epochs) ...", flush=True)
        cnn_result = cnn(X, label, train, test, args.epochs)
        timings["cnn_s"] = cnn_result["train_s"]
        score = cnn_result.pop("scores")
        aucs["CNN"] = cnn_result["test_auc"]
        cnn_result["test_auc_by_weight"] = {
            "star-forming look (0) vs composite look (0.5)": auc_between(score, weight[test], 0.0, 0.5),
            "star-forming look (0) vs AGN look (1)": auc_between(score, weight[test], 0.0, 1.0),
        }
    timings["total_s"] = now() - t_start

    rows = [{"model": name, "test AUC": f"{auc:.3f}", "": ""} for name, auc in aucs.items()]
    rows += [{"model": name, "test AUC": f"{auc:.3f}", "": "(a check, not a model)"} for name, auc in checks.items()]
    notes = [f"test set: {len(test)} galaxies, {int(label[test].sum())} AGN; train: {len(train)}"]
    if cnn_result is not None:
        lo, hi = TARGET_CNN_AUC
        auc = cnn_result["test_auc"]
        verdict = "within" if lo <= auc <= hi else ("BELOW" if auc < lo else "ABOVE (too easy)")
        notes.append(
            f"CNN: {cnn_result['epochs_run']} epochs, best validation AUC {cnn_result['best_val_auc']:.3f} "
            f"(epoch {cnn_result['best_epoch']}), {cnn_result['train_s']:.0f} s; test AUC {auc:.3f} is {verdict} "
            f"the target {lo:.2f}-{hi:.2f}"
        )
    notes.append(f"total {timings['total_s']:.0f} s")
    parameters = {
        "n": args.n,
        "seed": args.seed,
        "epochs": args.epochs,
        "px": args.px,
        "cnn": not args.no_cnn,
        "size": SIZE,
        "pixscale": "PETROTH90 * 1.5 * 2 / 250 arcsec/pixel, per galaxy",
        "resize": "Pillow LANCZOS",
        "label": "paper rule: AGN = 1 unless y < 0.61/(x - 0.05) + 1.3 and x < -0.1",
        "split_seed": SPLIT_SEED,
        "train_fraction": TRAIN_FRACTION,
        "validation_fraction_of_train": VALIDATION_FRACTION,
        "command": " ".join(sys.argv),
    }
    payload = {
        "parameters": parameters,
        "target_cnn_auc": TARGET_CNN_AUC,
        "galaxies": args.n,
        "catalog_rows_scanned": scanned,
        "agn_fraction": float(label.mean()),
        "label_by_weight": counts,
        "train_rows": len(train),
        "test_rows": len(test),
        "test_agn": int(label[test].sum()),
        "test_auc": aucs,
        "check_auc": checks,
        "cnn": cnn_result,
        "timings": timings,
    }
    report("render_auc", machine, payload, [Table(rows, ["model", "test AUC", ""], right=["test AUC"])], notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
