"""Are the label-free labels right? Whole-image CLIP labels and patch descriptions against the labelled concepts.

Runs ``neuronscan run configs/demo_labelfree.yaml`` (the shapes-world demo with the packaged tiny CLIP: the probe
embeds every image, the score stage's soft-WPMI names each unit's ``clip_label`` from its top 100 whole images, the
describe stage's crops name its ``patch_label``) in a child process, then measures, from the run's tables:

(a) **agreement with the labelled concept**: of the units with a significant labelled concept (``neurons.parquet``
    ``best_q ≤ score.alpha``, not dead), the fraction whose label-free label equals its ``best_concept`` or is an
    ancestor or descendant of it in the run's ``hierarchy.parquet`` (``related``; target ≥ 80 %) — also the stricter
    ``exact`` (the same word) and ``related_below_root`` (a root such as ``colour``, an ancestor of every colour,
    does not count), per layer, over the conv layers and over all layers;
(b) **CLIP-Dissect's final-layer test**: the model's output units (``head``; unit k is the logit of
    ``neuronscan.demo.model.HEAD_CONCEPTS[k]``) labelled with their own class (target ≥ 90 %);
(c) **patch vs whole image** on units whose best concept is *local* (a shape, colour or texture of the object:
    concepts under the roots ``shape``, ``colour``, ``texture``) and *global* (the background: under
    ``background``): ``related`` agreement of each label per layer and group, and which wins.

Beside the run's own ``patch_label`` it scores, from the run's stored crop embeddings (``describe/crops.parquet``)
and the vocabulary's text embeddings (``describe.json``; the run's CLIP), the patch label of every
``describe.method`` (``patch_zscore``, ``patch_mean_cosine``, ``patch_soft_wpmi``), and an **oracle**: the label
the ground-truth labels of the same top images give (the concept most over-represented among a unit's top
``describe.top_m`` images, ``(f_c − p_c) / √(p_c (1 − p_c))``), the best any description from those images can do.
It also counts how often a distractor (a word that is not a concept of the world) is the label.

``--min-crops 0.25,0.5,1`` reruns the describe stage on the run (``neuronscan describe RUN --set
describe.min_crop=…``) for each value and records the same figures for each (1 = whole images: the patch path
without patches), then describes the run again with its configured value.

    python benchmarks/labelfree_agreement.py                       # run the demo (resumes a finished run) and measure
    python benchmarks/labelfree_agreement.py --restart --min-crops 0.25,0.5,1   # from scratch, with the sweep
    python benchmarks/labelfree_agreement.py --skip-run            # measure an existing run only

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
METHODS = ("zscore", "mean_cosine", "soft_wpmi")
WHOLE_METHODS = ("correlation", "soft_wpmi")


def _hierarchy(run_dir: Path):
    from neuronscan.concepts import ancestors_map
    from neuronscan.concepts._labels import concept_depths

    h = pd.read_parquet(run_dir / "hierarchy.parquet")
    edges = list(zip(h["concept"], h["parent"]))
    depth = concept_depths(edges)
    return ancestors_map(edges), {c for c, d in depth.items() if d == 0}


def agreement(labels: pd.Series, best: pd.Series, anc: dict[str, set[str]], roots: set[str]) -> dict:
    """Fractions of units whose label is the best concept (exact), related to it (either way up the DAG), and
    related through a non-root concept."""
    exact = related = below = 0
    for label, b in zip(labels, best):
        if not isinstance(label, str) or not isinstance(b, str):
            continue
        a_b, a_l = anc.get(b, set()), anc.get(label, set())
        same = label == b
        exact += same
        related += same or label in a_b or b in a_l
        below += same or (label in a_b and label not in roots) or (b in a_l and b not in roots)
    n = len(best)
    return {"units": int(n), "exact": _frac(exact, n), "related": _frac(related, n),
            "related_below_root": _frac(below, n)}


def _frac(k: int, n: int) -> float | None:
    return round(k / n, 4) if n else None


def method_labels(run_dir: Path) -> pd.DataFrame:
    """Per unit the patch label of every ``describe.method``, scored from the run's stored crop embeddings."""
    from neuronscan.clip import embed_texts, load_clip
    from neuronscan.describe import crop_scores, describe_units

    summary = json.loads((run_dir / "describe" / "describe.json").read_text())
    clip = summary["clip"]
    bundle = load_clip(clip["model"], pretrained=clip.get("pretrained"), checkpoint=clip.get("checkpoint"))
    vocab = summary["vocabulary"]
    text = embed_texts(bundle, vocab)
    crops = pd.read_parquet(run_dir / "describe" / "crops.parquet", columns=["layer", "unit", "rank", "embedding"])
    crops = crops[crops["embedding"].notna()]
    frames = []
    for layer, rows in crops.groupby("layer", sort=False):
        units = np.unique(rows["unit"].to_numpy())
        emb = np.stack(rows["embedding"].to_numpy())
        index = np.searchsorted(units, rows["unit"].to_numpy())
        frame = pd.DataFrame({"layer": layer, "unit": units})
        for method in METHODS:
            scores = crop_scores(emb, index, rows["rank"].to_numpy(), text, n_units=len(units), method=method,
                                 top_m=int(summary["counts"]["top_m"]))
            frame[f"patch_{method}"] = describe_units(scores, vocab, top_n=1)["patch_label"].to_numpy()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def whole_image_labels(run_dir: Path) -> pd.DataFrame:
    """Per unit the whole-image label of each ``probe.clip.method`` (``clip_correlation``, ``clip_soft_wpmi``),
    computed from the run's stored activations and image embeddings with the public kernels, whatever method the
    run itself used."""
    import pyarrow.parquet as pq

    from neuronscan.clip import embed_texts, load_clip, resolve_vocabulary
    from neuronscan.config import config_from_dict
    from neuronscan.io import RunDir
    from neuronscan.stats import clip_correlation, soft_wpmi

    run = RunDir(str(run_dir))
    clip = config_from_dict((run.read_info() or {})["config"]).probe.clip
    vocab = resolve_vocabulary(clip, sorted(pd.read_parquet(run_dir / "labels.parquet")["concept"].unique()))
    text = embed_texts(load_clip(clip.model, pretrained=clip.pretrained, checkpoint=clip.checkpoint), vocab)
    emb = pq.read_table(run_dir / "clip").to_pandas().drop_duplicates("image_id").sort_values("image_id")
    image_emb = np.stack(emb["embedding"].to_numpy())
    frames = []
    for layer in pd.read_parquet(run_dir / "neurons.parquet", columns=["layer"])["layer"].unique():
        acts = pq.read_table(run.activations(layer)).to_pandas().set_index("image_id").loc[emb["image_id"]]
        a = acts.to_numpy()
        frame = pd.DataFrame({"layer": layer, "unit": [int(c[1:]) for c in acts.columns]})
        for name, scores in (("clip_correlation", clip_correlation(a, image_emb, text)),
                             ("clip_soft_wpmi", soft_wpmi(a, image_emb, text, top_k=clip.top_k))):
            ok = np.isfinite(scores).any(axis=1)
            best = np.argmax(np.where(np.isfinite(scores), scores, -np.inf), axis=1)
            frame[name] = [vocab[j] if k else None for j, k in zip(best, ok)]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def oracle_labels(run_dir: Path, top_m: int, anc: dict[str, set[str]]) -> pd.DataFrame:
    """Per unit the concept most over-represented among its top ``top_m`` images by their ground-truth labels."""
    labels = pd.read_parquet(run_dir / "labels.parquet")
    concepts = sorted(anc)
    col = {c: i for i, c in enumerate(concepts)}
    images = np.unique(labels["image_id"].to_numpy())
    row = {int(i): k for k, i in enumerate(images)}
    y = np.zeros((len(images), len(concepts)))
    for i, c in zip(labels["image_id"], labels["concept"]):
        for a in {c} | anc.get(c, set()):
            y[row[int(i)], col[a]] = 1
    p = y.mean(0)
    sd = np.sqrt(np.maximum(p * (1 - p), 1e-12))
    frames = []
    for path in sorted((run_dir / "topk").glob("*.parquet")):
        top = pd.read_parquet(path)
        top = top[top["rank"] < top_m]
        units, labs = [], []
        for unit, g in top.groupby("unit"):
            f = y[[row[int(i)] for i in g["image_id"] if int(i) in row]].mean(0)
            z = np.where(p < 1, (f - p) / sd, -np.inf)
            units.append(int(unit))
            labs.append(concepts[int(np.argmax(z))])
        layer = path.stem.replace("__", ":")
        frames.append(pd.DataFrame({"layer": layer, "unit": units, "oracle": labs}))
    return pd.concat(frames, ignore_index=True)


def measure(run_dir: Path) -> dict:
    from neuronscan.demo.model import HEAD_CONCEPTS
    from neuronscan.io import RunDir, run_alpha

    info = RunDir(str(run_dir)).read_info() or {}
    alpha = run_alpha(info) or 0.05
    summary = json.loads((run_dir / "describe" / "describe.json").read_text())
    method = summary["settings"]["method"]
    neurons = pd.read_parquet(run_dir / "neurons.parquet")
    desc = pd.read_parquet(run_dir / "descriptions.parquet")
    anc, roots = _hierarchy(run_dir)
    concepts = set(anc)
    units = (neurons.merge(desc[["layer", "unit", "patch_label", "concepts"]], on=["layer", "unit"], how="left")
             .merge(method_labels(run_dir), on=["layer", "unit"], how="left")
             .merge(whole_image_labels(run_dir), on=["layer", "unit"], how="left")
             .merge(oracle_labels(run_dir, int(summary["counts"]["top_m"]), anc), on=["layer", "unit"], how="left"))
    consistent = bool((units["patch_label"].fillna("") == units[f"patch_{method}"].fillna("")).all())
    layers = list(pd.unique(neurons["layer"]))
    sig = units[(units["best_q"] <= alpha) & ~units["dead"].astype(bool) & units["best_concept"].notna()]
    columns = ("clip_label", *(f"clip_{m}" for m in WHOLE_METHODS), "patch_label", *(f"patch_{m}" for m in METHODS),
               "oracle")
    clip_method = ((info.get("config") or {}).get("probe", {}).get("clip") or {}).get("method", "soft_wpmi")
    clip_consistent = bool((units["clip_label"].fillna("") == units[f"clip_{clip_method}"].fillna("")).all())

    def table(frame: pd.DataFrame) -> dict:
        return {c: agreement(frame[c], frame["best_concept"], anc, roots) for c in columns}

    # (a) units with a significant labelled concept
    a = {"alpha": alpha, "method": method, "layers": {layer: table(sig[sig["layer"] == layer]) for layer in layers},
         "conv_layers": table(sig[sig["layer"] != "head"]), "all": table(sig)}

    # (b) the output layer: unit k is class HEAD_CONCEPTS[k]
    head = units[units["layer"] == "head"].sort_values("unit")
    own = np.asarray([HEAD_CONCEPTS[int(u)] for u in head["unit"]], dtype=object)
    b = {"units": int(len(head)),
         **{f"{c}_own_class": _frac(int((head[c].to_numpy() == own).sum()), len(head)) for c in columns},
         "patch_top5_own_class": _frac(int(sum(c in list(ws)[:5] for c, ws in zip(own, head["concepts"]))),
                                       len(head)),
         "per_unit": [{"unit": int(u), "class": c, "clip_label": _str(cl), "patch_label": _str(pl)}
                      for u, c, cl, pl in zip(head["unit"], own, head["clip_label"], head["patch_label"])]}

    # (c) local (object attribute) vs global (background) best concepts
    def group_of(concept: str) -> str | None:
        family = anc.get(concept, set()) | {concept}
        return "global" if family & set(GLOBAL_ROOTS) else "local" if family & set(LOCAL_ROOTS) else None

    def root_of(concept: str) -> str | None:
        family = anc.get(concept, set()) | {concept}
        return next((r for r in (*LOCAL_ROOTS, *GLOBAL_ROOTS) if r in family), None)

    sig = sig.assign(group=sig["best_concept"].map(group_of), root=sig["best_concept"].map(root_of))
    c = {"groups": {"local": list(LOCAL_ROOTS), "global": list(GLOBAL_ROOTS)}, "layers": {}}
    for layer in [*layers, "all conv"]:
        s = sig[sig["layer"] != "head"] if layer == "all conv" else sig[sig["layer"] == layer]
        row = {}
        for group in ("local", "global", *LOCAL_ROOTS):
            g = s[s["group"] == group] if group in ("local", "global") else s[s["root"] == group]
            t = table(g)
            w, p = t["clip_label"]["related"], t["patch_label"]["related"]
            winner = None if w is None else ("patch" if p > w else "whole image" if w > p else "tie")
            row[group] = {"units": int(len(g)), "whole_image_related": w, "patch_related": p, "wins": winner,
                          **{f"{k}_related": v["related"] for k, v in t.items()
                             if k.startswith(("patch_", "clip_", "oracle"))}}
        c["layers"][layer] = row

    distractor = {col: _frac(int((~units[col].dropna().isin(concepts)).sum()), int(units[col].notna().sum()))
                  for col in columns}
    return {"run_dir": str(run_dir), "run_id": info.get("run_id"), "units": int(len(units)),
            "units_significant": int(len(sig)), "patch_label_is_patch_method": consistent,
            "clip_method": clip_method, "clip_label_is_clip_method": clip_consistent,
            "a_significant_units": a, "b_output_layer": b, "c_local_vs_global": c,
            "distractor_label_rate": distractor,
            "timings": info.get("timings", {}), "describe": info.get("describe", {}),
            "clip": (info.get("config") or {}).get("probe", {}).get("clip"),
            "describe_config": (info.get("config") or {}).get("describe")}


def summary_row(m: dict) -> dict:
    """The headline figures of one measurement: (a) related over conv layers and all, (b), (c) over conv layers
    (local, global, and the local roots one by one)."""
    a, b, c = m["a_significant_units"], m["b_output_layer"], m["c_local_vs_global"]["layers"]["all conv"]
    cols = ("clip_label", *(f"clip_{x}" for x in WHOLE_METHODS), *(f"patch_{x}" for x in METHODS), "oracle")
    key = {"clip_label": "whole_image_related"}
    return {col: {"a_conv": a["conv_layers"][col]["related"], "a_all": a["all"][col]["related"],
                  "b_own_class": b[f"{col}_own_class"],
                  **{f"c_{g}": c[g][key.get(col, f"{col}_related")] for g in ("local", "global", *LOCAL_ROOTS)}}
            for col in cols}


def _str(x) -> str | None:
    return x if isinstance(x, str) else None


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def report(m: dict) -> None:
    a, b, c = m["a_significant_units"], m["b_output_layer"], m["c_local_vs_global"]
    print(f"\n(a) units with a significant concept (best_q ≤ {a['alpha']}): {m['units_significant']} of {m['units']}; "
          f"related (exact): whole image = the score stage's clip_label (probe.clip.method {m['clip_method']}), "
          f"patch = describe.method {a['method']}")
    cols = ("clip_label", *(f"clip_{x}" for x in WHOLE_METHODS if x != m["clip_method"]), "patch_label",
            *(f"patch_{x}" for x in METHODS if x != a["method"]), "oracle")
    print(f"  {'layer':<12} {'units':>5}  " + "".join(f"{col:<22}" for col in cols))
    print(f"  (clip_label is clip_{m['clip_method']} computed from the run's files: {m['clip_label_is_clip_method']}; "
          f"patch_label is patch_{a['method']}: {m['patch_label_is_patch_method']})")
    for layer, r in [*a["layers"].items(), ("conv layers", a["conv_layers"]), ("all", a["all"])]:
        cells = "".join(f"{_pct(r[col]['related']) + ' (' + _pct(r[col]['exact']) + ')':<22}" for col in cols)
        print(f"  {layer:<12} {r['clip_label']['units']:>5}  {cells}")
    print(f"\n(b) output layer, {b['units']} units labelled with their own class: "
          + ", ".join(f"{col} {_pct(b[col + '_own_class'])}" for col in cols)
          + f"; own class in the patch top 5: {_pct(b['patch_top5_own_class'])}")
    print("\n(c) related agreement by the best concept's group, whole image vs patch:")
    for layer, row in c["layers"].items():
        cells = [f"{g}: {r['units']:>3} units, {_pct(r['whole_image_related'])} vs {_pct(r['patch_related'])} "
                 f"({r['wins'] or '—'})" for g, r in row.items() if g in ("local", "global")]
        print(f"  {layer:<12} " + " | ".join(cells))
    d = m["distractor_label_rate"]
    print("\ndistractor labels: " + ", ".join(f"{col} {_pct(d[col])}" for col in cols))
    allc = c["layers"]["all conv"]
    print("by root over the conv layers (whole image vs patch): " + "; ".join(
        f"{g} {allc[g]['units']} units {_pct(allc[g]['whole_image_related'])} vs {_pct(allc[g]['patch_related'])}"
        for g in (*LOCAL_ROOTS, "global")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/demo_labelfree.yaml")
    p.add_argument("--run-id", default=None, help="run id (default: the config's)")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    p.add_argument("--restart", action="store_true", help="neuronscan run --restart")
    p.add_argument("--skip-run", action="store_true", help="measure an existing run only")
    p.add_argument("--min-crops", default="", help="comma-separated describe.min_crop values to sweep")
    p.add_argument("--out", default="benchmarks/results/labelfree_agreement.json")
    args = p.parse_args(argv)

    from neuronscan.config import apply_overrides, config_from_dict, load_config, parse_overrides
    from neuronscan.io import RunDir

    cfg = load_config(args.config)
    if args.overrides or args.run_id:
        ov = parse_overrides(args.overrides)
        if args.run_id:
            ov["run.run_id"] = args.run_id
        cfg = config_from_dict(apply_overrides(cfg.model_dump(mode="json"), ov))
    run_dir = Path(RunDir.for_run(cfg.run.out, cfg.model.name, cfg.run.run_id).root)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "neuronscan", "run", args.config, *(["--restart"] if args.restart else []),
               *(["--run-id", args.run_id] if args.run_id else []),
               *[x for o in args.overrides for x in ("--set", o)]]
    wall = None
    if not args.skip_run:
        print("$", " ".join(command[2:]), flush=True)
        t = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, env=env)
        wall = round(time.perf_counter() - t, 2)
    m = measure(run_dir)
    report(m)
    sweep = {}
    values = [float(v) for v in args.min_crops.split(",") if v.strip()]
    for value in [*values, cfg.describe.min_crop] if values else []:
        describe = [sys.executable, "-m", "neuronscan", "describe", str(run_dir), "--quiet", "--no-report",
                    "--set", f"describe.min_crop={value}"]
        print("$", " ".join(describe[2:]), flush=True)
        t = time.perf_counter()
        subprocess.run(describe, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        seconds = round(time.perf_counter() - t, 2)
        if len(sweep) < len(values):
            sweep[str(value)] = {"describe_s": seconds, **summary_row(measure(run_dir))}
    if sweep:
        print("\nmin_crop sweep (related, over the conv layers / all; (b) own class):")
        for value, row in sweep.items():
            print(f"  min_crop {value}: " + "; ".join(
                f"{col} {_pct(r['a_conv'])} / {_pct(r['a_all'])}, (b) {_pct(r['b_own_class'])}"
                for col, r in row.items() if col != "describe_s"))
        if not args.skip_run:
            subprocess.run([sys.executable, "-m", "neuronscan", "report", str(run_dir)], check=True, cwd=ROOT,
                           env=env, stdout=subprocess.DEVNULL)
    m.update({"command": "python -m neuronscan run " + " ".join(command[4:]), "wall_s": wall,
              "summary": summary_row(m), "min_crop_sweep": sweep, "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_avg_end": [round(x, 2) for x in os.getloadavg()]})
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(m, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {out}")
    return 0


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
