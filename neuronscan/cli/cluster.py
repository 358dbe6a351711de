"""Cluster commands: ``submit``, ``status``, ``logs`` (the Ray Jobs API)."""

from __future__ import annotations

import sys

from neuronscan.cli._common import FORMATTER, examples, ray_jobs_address
from neuronscan.errors import NeuronscanError


def add_parsers(sub) -> dict:
    """Add this group's subcommands to ``sub``; return command name → handler."""
    p = sub.add_parser("submit", help="submit an audit to a Ray cluster (Ray Jobs API)", formatter_class=FORMATTER,
                       description="Validate CONFIG here and submit it as a Ray job; prints the job id and run dir. "
                       "This checkout travels as the job's working_dir; the config's YAML travels in the job's "
                       "environment, so paths inside it must be visible to the cluster (use s3://).",
                       epilog=examples("neuronscan submit configs/demo.yaml --address http://127.0.0.1:8265",
                                        "neuronscan submit configs/nightly_audit.yaml --address http://head:8265 "
                                        "--wait"))
    p.add_argument("config")
    p.add_argument("--address", metavar="URL", help="Ray dashboard address (default: RAY_ADDRESS)")
    p.add_argument("--run-id", metavar="ID")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides")
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--restart", action="store_true",
                   help="delete the outputs of this run id on the cluster's storage and start it again")
    p.add_argument("--pip", action="store_true", help="have Ray pip-install the pinned requirements on the cluster")
    p.add_argument("--no-working-dir", action="store_true", help="use the neuronscan installed on the cluster")
    p.add_argument("--env", metavar="K=V", action="append", default=[], help="environment variable for the job")
    p.add_argument("--wait", action="store_true", help="wait for the job; exit 0 only if it succeeded")
    p.add_argument("--timeout", type=float, metavar="S")

    for name, what in (("status", "print a submitted job's status"), ("logs", "print a submitted job's logs")):
        p = sub.add_parser(name, help=what, formatter_class=FORMATTER, description=what.capitalize() + ".",
                           epilog=examples(f"neuronscan {name} raysubmit_abc123 --address http://127.0.0.1:8265"))
        p.add_argument("job_id")
        p.add_argument("--address", metavar="URL", help="Ray dashboard address (default: RAY_ADDRESS)")

    return {"submit": _cmd_submit, "status": _cmd_status, "logs": _cmd_logs}


def _cmd_submit(args) -> int:
    from neuronscan.jobs import build_job_spec, job_logs, pinned_requirements, submit_spec, wait_for_job

    env_vars = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NeuronscanError(f"--env {item!r}: expected K=V")
        env_vars[key] = value
    spec = build_job_spec(
        args.config, overrides=args.overrides, run_id=args.run_id,
        working_dir=None if args.no_working_dir else "auto",
        requirements=pinned_requirements() if args.pip else None, env_vars=env_vars or None,
        report=not args.no_report, restart=args.restart,
    )
    address = ray_jobs_address(args)
    job_id = submit_spec(spec, address=address)
    print(job_id)
    print(f"run dir: {spec.run_dir}", file=sys.stderr)
    print(f"follow it: neuronscan status {job_id} --address {address}; neuronscan logs {job_id} --address {address}",
          file=sys.stderr)
    if not args.wait:
        return 0
    try:
        status = wait_for_job(job_id, address=address, timeout=args.timeout)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"job {job_id}: {status}", file=sys.stderr)
    if status != "SUCCEEDED":
        print(job_logs(job_id, address=address)[-4000:], file=sys.stderr)
        return 1
    return 0


def _cmd_status(args) -> int:
    from neuronscan.jobs import job_status

    print(job_status(args.job_id, address=ray_jobs_address(args)))
    return 0


def _cmd_logs(args) -> int:
    from neuronscan.jobs import job_logs

    print(job_logs(args.job_id, address=ray_jobs_address(args)), end="")
    return 0
