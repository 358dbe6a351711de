"""Are the label-free labels right? Whole-image CLIP labels and patch descriptions against the labelled concepts.

Runs ``neuronscan run configs/demo_labelfree.yaml`` (the shapes-world demo with the packaged tiny CLIP: the probe
embeds every image, the score stage's soft-WPMI names each unit's ``clip_label``, the describe stage's crops name
its ``patch_label``) in a child process, then measures, from the run's tables:

(a) **agreement with the labelled concept**: of the units with a significant labelled concept (``neurons.parquet``
    ``best_q ≤ score.alpha``, not dead), the fraction whose label-free label equals its ``best_concept`` or is an
    ancestor or descendant of it in the run's ``hierarchy.parquet`` (``related``; target ≥ 80 %) — also the stricter
    fractions ``exact`` (the same word) and ``related_below_root`` (a root such as ``colour`` is an ancestor of
    every colour: it does not count), per layer and over all layers;
(b) **CLIP-Dissect's final-layer test**: the model's output units (``head``; unit k is the logit of
    ``neuronscan.demo.model.HEAD_CONCEPTS[k]``) labelled with their own class (target ≥ 90 %);
(c) **patch vs whole image** on units whose best concept is *local* (a shape, colour or texture of the object:
    concepts under the roots ``shape``, ``colour``, ``texture``) and *global* (the background: under
    ``background``): ``related`` agreement of each label per layer and group, and which wins.

Also: how often a distractor word of the vocabulary (not a concept of the world) is the label; and the patch
labels the other ``describe.method`` would give (soft-WPMI over crops when the run used the mean cosine, and the
other way round), scored from the run's own crop embeddings (``describe/crops.parquet``) and the vocabulary's text
embeddings (``describe.json`` ``vocabulary``, the run's CLIP) — the same numbers without a second run.

    python benchmarks/labelfree_agreement.py                       # run the demo (resumes a finished run) and measure
    python benchmarks/labelfree_agreement.py --restart             # from scratch (neuronscan run --restart)
    python benchmarks/labelfree_agreement.py --skip-run            # measure an existing run only
    python benchmarks/labelfree_agreement.py --set describe.method=soft_wpmi --run-id demo_labelfree_wpmi

Writes benchmarks/results/labelfree_agreement.json (``--out``) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
LOCAL_ROOTS = ("shape", "colour", "texture")
GLOBAL_ROOTS = ("background",)


def _related_sets(edges: list[tuple[str, str]]):
    from neuronscan.concepts import ancestors_map
    from neuronscan.concepts._labels import concept_depths

    anc = ancestors_map(edges)
    depth = concept_depths(edges)
    roots = {c for c, d in depth.items() if d == 0}
    return anc, roots


def agreement(labels: pd.Series, best: pd.Series, anc: dict[str, set[str]], roots: set[str]) -> dict:
    """Fractions of units whose label is the best concept (exact), related to it (either way up the DAG), and
    related through a non-root concept."""
    exact = related = below = 0
    for label, b in zip(labels, best):
        if not isinstance(label, str) or not isinstance(b, str):
            continue
        a_b, a_l = anc.get(b, set()), anc.get(label, set())
        same = label == b
        rel = same or label in a_b or b in a_l
        exact += same
        related += rel
        below += same or (label in a_b and label not in roots) or (b in a_l and b not in roots)
    n = len(best)
    return {"units": int(n), "exact": _frac(exact, n), "related": _frac(related, n),
            "related_below_root": _frac(below, n)}


def _frac(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def other_method_labels(run_dir: Path, info: dict) -> tuple[str, pd.DataFrame]:
    """Per unit the patch label of the ``describe.method`` the run did not use, from its stored crop embeddings."""
    from neuronscan.clip import embed_texts, load_clip
    from neuronscan.describe import crop_scores, describe_units

    summary = json.loads((run_dir / "describe" / "describe.json").read_text())
    method = summary["settings"]["method"]
    other = "soft_wpmi" if method == "mean_cosine" else "mean_cosine"
    clip = summary["clip"]
    bundle = load_clip(clip["model"], pretrained=clip.get("pretrained"), checkpoint=clip.get("checkpoint"))
    vocab = summary["vocabulary"]
    text = embed_texts(bundle, vocab)
    crops = pd.read_parquet(run_dir / "describe" / "crops.parquet")
    crops = crops[crops["embedding"].notna()]
    frames = []
    for layer, rows in crops.groupby("layer", sort=False):
        units = np.unique(rows["unit"].to_numpy())
        scores = crop_scores(np.stack(rows["embedding"].to_numpy()), np.searchsorted(units, rows["unit"].to_numpy()),
                             rows["rank"].to_numpy(), text, n_units=len(units), method=other,
                             top_m=int(summary["counts"]["top_m"]))
        d = describe_units(scores, vocab, top_n=1)
        frames.append(pd.DataFrame({"layer": layer, "unit": units, "other_label": d["patch_label"].to_numpy()}))
    return other, pd.concat(frames, ignore_index=True)


def measure(run_dir: Path) -> dict:
    from neuronscan.demo.model import HEAD_CONCEPTS
    from neuronscan.io import RunDir, run_alpha

    run = RunDir(str(run_dir))
    info = run.read_info() or {}
    alpha = run_alpha(info) or 0.05
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    desc = pd.read_parquet(run_dir / "descriptions.parquet")
    h = pd.read_parquet(run_dir / "hierarchy.parquet")
    edges = list(zip(h["concept"], h["parent"]))
    anc, roots = _related_sets(edges)
    concepts = set(anc)
    other, other_labels = other_method_labels(run_dir, info)
    units = neurons.merge(desc[["layer", "unit", "patch_label", "patch_score", "n_crops"]], on=["layer", "unit"],
                          how="left").merge(other_labels, on=["layer", "unit"], how="left")
    layers = list(pd.unique(neurons["layer"]))
    sig = units[(units["best_q"] <= alpha) & ~units["dead"].astype(bool) & units["best_concept"].notna()]

    # (a) units with a significant labelled concept
    a = {"alpha": alpha, "other_label": f"patch label by {other} (the method the run did not use)", "layers": {},
         "all": {}}
    labels = ("clip_label", "patch_label", "other_label")
    for label in labels:
        a["all"][label] = agreement(sig[label], sig["best_concept"], anc, roots)
    for layer in layers:
        s = sig[sig["layer"] == layer]
        a["layers"][layer] = {label: agreement(s[label], s["best_concept"], anc, roots) for label in labels}
    conv = sig[sig["layer"] != "head"]
    a["conv_layers"] = {label: agreement(conv[label], conv["best_concept"], anc, roots) for label in labels}

    # (b) the output layer: unit k is class HEAD_CONCEPTS[k]
    head = units[units["layer"] == "head"].sort_values("unit")
    own = pd.Series([HEAD_CONCEPTS[int(u)] for u in head["unit"]], index=head.index)
    top5 = desc[desc["layer"] == "head"].set_index("unit")["concepts"]
    b = {"units": int(len(head)),
         "clip_label_own_class": _frac(int((head["clip_label"] == own).sum()), len(head)),
         "patch_label_own_class": _frac(int((head["patch_label"] == own).sum()), len(head)),
         "other_label_own_class": _frac(int((head["other_label"] == own).sum()), len(head)),
         "patch_top5_own_class": _frac(int(sum(c in list(top5.get(u, [])) for u, c in zip(head["unit"], own))),
                                       len(head)),
         "per_unit": [{"unit": int(u), "class": c, "clip_label": _str(cl), "patch_label": _str(pl)}
                      for u, c, cl, pl in zip(head["unit"], own, head["clip_label"], head["patch_label"])]}

    # (c) local (object attribute) vs global (background) best concepts
    def group_of(concept: str) -> str | None:
        family = anc.get(concept, set()) | {concept}
        if family & set(GLOBAL_ROOTS):
            return "global"
        if family & set(LOCAL_ROOTS):
            return "local"
        return None

    sig = sig.assign(group=sig["best_concept"].map(group_of))
    c = {"groups": {"local": list(LOCAL_ROOTS), "global": list(GLOBAL_ROOTS)}, "layers": {}}
    for layer in [*layers, "all conv"]:
        s = sig[sig["layer"] != "head"] if layer == "all conv" else sig[sig["layer"] == layer]
        row = {}
        for group in ("local", "global"):
            g = s[s["group"] == group]
            whole = agreement(g["clip_label"], g["best_concept"], anc, roots)
            patch = agreement(g["patch_label"], g["best_concept"], anc, roots)
            alt = agreement(g["other_label"], g["best_concept"], anc, roots)
            w, p = whole["related"], patch["related"]
            winner = None if w is None else ("patch" if p > w else "whole image" if w > p else "tie")
            row[group] = {"units": whole["units"], "whole_image_related": w, "patch_related": p, "wins": winner,
                          "whole_image_exact": whole["exact"], "patch_exact": patch["exact"],
                          "other_method_patch_related": alt["related"]}
        c["layers"][layer] = row

    distractor = {}
    for label in labels:
        lab = units[label].dropna()
        distractor[label] = _frac(int((~lab.isin(concepts)).sum()), len(lab))
    return {"run_dir": str(run_dir), "run_id": info.get("run_id"),
            "units": int(len(units)), "units_significant": int(len(sig)),
            "a_significant_units": a, "b_output_layer": b, "c_local_vs_global": c,
            "distractor_label_rate": distractor,
            "timings": info.get("timings", {}), "describe": info.get("describe", {}),
            "clip": (info.get("config") or {}).get("probe", {}).get("clip"),
            "describe_config": (info.get("config") or {}).get("describe")}


def _str(x) -> str | None:
    return x if isinstance(x, str) else None


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def report(m: dict) -> None:
    a, b, c = m["a_significant_units"], m["b_output_layer"], m["c_local_vs_global"]
    print(f"\n(a) units with a significant concept (best_q ≤ {a['alpha']}): {m['units_significant']} of {m['units']}")
    print(f"  exact / related / related below the roots; 'other': {a['other_label']}")
    print(f"  {'layer':<12} {'units':>6}  {'whole image':<30} {'patch':<30} other")
    rows = [*a["layers"].items(), ("all", a["all"]), ("conv only", a["conv_layers"])]
    for layer, r in rows:
        cells = [" / ".join(_pct(r[k][m]) for m in ("exact", "related", "related_below_root"))
                 for k in ("clip_label", "patch_label", "other_label")]
        print(f"  {layer:<12} {r['clip_label']['units']:>6}  {cells[0]:<30} {cells[1]:<30} {cells[2]}")
    print(f"\n(b) output layer: {b['units']} units; own class — whole image {_pct(b['clip_label_own_class'])}, "
          f"patch {_pct(b['patch_label_own_class'])} (patch top 5: {_pct(b['patch_top5_own_class'])}; other method "
          f"{_pct(b['other_label_own_class'])})")
    print("\n(c) related agreement by best-concept group: whole image vs patch")
    for layer, row in c["layers"].items():
        cells = [f"{g}: {r['units']:>3} units, {_pct(r['whole_image_related'])} vs {_pct(r['patch_related'])} "
                 f"({r['wins'] or '—'})" for g, r in row.items()]
        print(f"  {layer:<12} " + " | ".join(cells))
    d = m["distractor_label_rate"]
    print(f"\ndistractor labels: whole image {_pct(d['clip_label'])}, patch {_pct(d['patch_label'])}, other method "
          f"{_pct(d['other_label'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_labelfree.yaml")
    p.add_argument("--run-id", default=None, help="run id (default: the config's)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--restart", action="store_true", help="neuronscan run --restart")
    p.add_argument("--skip-run", action="store_true", help="measure an existing run only")
    p.add_argument("--out", default="benchmarks/results/labelfree_agreement.json")
    args = p.parse_args(argv)

    from neuronscan.config import apply_overrides, config_from_dict, load_config, parse_overrides

    cfg = load_config(args.config)
    if args.overrides or args.run_id:
        ov = parse_overrides(args.overrides)
        if args.run_id:
            ov["run.run_id"] = args.run_id
        cfg = config_from_dict(apply_overrides(cfg.model_dump(mode="json"), ov))
    from neuronscan.io import RunDir, model_folder

    run_dir = Path(RunDir.for_run(cfg.run.out, cfg.model.name, cfg.run.run_id).root)
    command = [sys.executable, "-m", "neuronscan", "run", args.config, *(["--restart"] if args.restart else []),
               *(["--run-id", args.run_id] if args.run_id else []),
               *[x for o in args.overrides for x in ("--set", o)]]
    wall = None
    if not args.skip_run:
        print("$", " ".join(command[2:]), flush=True)
        t = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = round(time.perf_counter() - t, 2)
    m = measure(run_dir)
    m.update({"command": "python -m neuronscan run " + " ".join(command[4:]), "wall_s": wall,
              "model_folder": model_folder(cfg.model.name), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_avg": list(os.getloadavg())})
    report(m)
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(m, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {out}")
    return 0


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
