"""The driver side of a submitted audit: ``python -m neuronscan.jobs run NAME [neuronscan run options]``.

`submit_audit` puts the config's YAML text in ``NEURONSCAN_JOB_CONFIG``; this writes it to a private
temporary file named ``NAME`` and runs ``neuronscan run`` on it in a child process, so the job behaves
exactly like the command line (same messages, same exit codes) and this package never imports the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from neuronscan.jobs._submit import CONFIG_ENV

USAGE = f"usage: python -m neuronscan.jobs run CONFIG_NAME [neuronscan run options]  (config text in ${CONFIG_ENV})"


def _run_cli(argv: list[str]) -> int:
    """``neuronscan ARGV`` in a child process of this interpreter; its exit status."""
    return subprocess.call([sys.executable, "-m", "neuronscan", *argv])


def main(argv: list[str] | None = None) -> int:
    """Run ``neuronscan run`` on the config carried in the environment; return its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "run":
        print(USAGE, file=sys.stderr)
        return 2
    text = os.environ.get(CONFIG_ENV)
    if not text:
        print(f"error: ${CONFIG_ENV} is empty; submit jobs with neuronscan submit (neuronscan.jobs.submit_audit)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="neuronscan-job-") as tmp:
        path = Path(tmp) / (Path(argv[1]).name or "config.yaml")
        path.write_text(text)
        return _run_cli(["run", str(path), *argv[2:]])
