"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import os
import sys

from neuronscan.errors import NeuronscanError

FORMATTER = argparse.RawDescriptionHelpFormatter


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_config_args(p: argparse.ArgumentParser, *, out_help: str = "registry root (overrides run.out)") -> None:
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument("--out", metavar="DIR", help=out_help)
    p.add_argument("--run-id", metavar="ID", help="run id; the same id resumes that run (overrides run.run_id)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (ray://HOST:10001 or auto); default: "
                   "RAY_ADDRESS, else a local Ray")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                   help="override a config value, e.g. --set probe.batch_size=32 (repeatable)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the final summary")


def overrides(args) -> dict:
    from neuronscan.config import parse_overrides

    ov = parse_overrides(getattr(args, "overrides", []))
    if getattr(args, "out", None) and args.command in ("run", "probe"):
        ov["run.out"] = args.out
    if getattr(args, "run_id", None):
        ov["run.run_id"] = args.run_id
    if getattr(args, "address", None):
        ov["ray.address"] = args.address
    return ov


def print_top(top, stream=sys.stdout) -> None:
    if top is None or len(top) == 0:
        return
    print("\ntop units per layer (by best AUC):", file=stream)
    header = f"  {'layer':<16} {'unit':>5}  {'best concept':<20} {'AUC':>6} {'q':>9}  formula"
    print(header, file=stream)
    for row in top.itertuples(index=False):
        formula = row.formula if isinstance(row.formula, str) else ""
        q = f"{row.best_q:>9.2e}" if row.best_q > 0 else "  <1e-300"  # q underflows where p does
        print(f"  {row.layer:<16} {row.unit:>5}  {str(row.best_concept):<20} {row.best_auc:>6.3f} "
              f"{q}  {formula}", file=stream)


def ray_jobs_address(args) -> str:
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise NeuronscanError("no Ray address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return address


