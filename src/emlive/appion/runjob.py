"""``runJob.py``: what Appion's web UI calls to launch a processing command on the cluster.

It takes the command line as the web UI sends it (``runJob.py makeDDAlignMotionCor2_UCSF.py
--rundir=… --nodes=1 --ppn=4 --walltime=24 …``), takes out the batch-system flags (``--nodes``,
``--ppn``, ``--walltime``, ``--queue``), renders a batch script from a Jinja2 template into the
run folder (``batch.sh``; template folder ``APPION_TEMPLATE_DIR``, default emlive's own, template
``APPION_JOB_TEMPLATE``, default ``slurm_job.sh.j2``; it is given ``command``, ``rundir``,
``jobname``, ``nodes``, ``ppn``, ``walltime``, ``queue``), appends the command line to
``run_command.txt`` and submits the script with ``sbatch``, printing the job id.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

PROG = "runJob.py"
BATCH_FLAGS = ("--nodes", "--ppn", "--walltime", "--queue")
RUNDIR_FLAGS = ("--rundir", "--outdir", "-R")
DEFAULT_TEMPLATE = "slurm_job.sh.j2"
WRAPPER_ENV = "APPION_WRAPPER_PATH"


@dataclass
class JobRequest:
    command: list[str]
    rundir: Path
    runname: str | None = None
    batch: dict[str, str] = field(default_factory=dict)


def parse_job(argv: list[str]) -> JobRequest:
    """Split the web UI's command line into the command and the batch-system flags (pure).

    Both ``--flag value`` and ``--flag=value`` forms are taken; a wrapper named by
    ``APPION_WRAPPER_PATH`` is dropped, as classic runJob.py does."""
    wrapper = os.environ.get(WRAPPER_ENV, "").strip()
    command: list[str] = []
    batch: dict[str, str] = {}
    rundir = runname = None
    tokens = [t for t in argv if not (wrapper and t.strip() == wrapper)]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        takes_next = not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("-")
        if name in BATCH_FLAGS + RUNDIR_FLAGS + ("--runname", "-n"):
            if not eq and takes_next:
                value, i = tokens[i + 1], i + 1
            if name in BATCH_FLAGS:
                batch[name.lstrip("-")] = value
                i += 1
                continue
            if name in RUNDIR_FLAGS:
                rundir = value
            else:
                runname = value
            command.append(f"{name}={value}")
        else:
            command.append(token)
        i += 1
    if not rundir:
        raise ValueError("no --rundir in the command: the batch script and its output go to the run folder")
    if "walltime" in batch and re.fullmatch(r"\d+", batch["walltime"]):
        batch["walltime"] = f"{batch['walltime']}:00:00"  # the web UI gives hours
    return JobRequest(command, Path(rundir), runname, batch)


def render(job: JobRequest, *, template_dir: Path | None = None, template: str | None = None) -> str:
    """The batch script for ``job`` from the template."""
    folder = template_dir or Path(os.environ.get("APPION_TEMPLATE_DIR") or Path(__file__).parent / "templates")
    name = template or os.environ.get("APPION_JOB_TEMPLATE") or DEFAULT_TEMPLATE
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    try:
        loaded = env.get_template(name)
    except jinja2.TemplateNotFound:
        raise ValueError(f"no batch template {name} in {folder} (APPION_TEMPLATE_DIR, APPION_JOB_TEMPLATE)") from None
    return loaded.render(
        command=shlex.join(job.command), rundir=str(job.rundir), jobname=job.runname or job.rundir.name,
        nodes=job.batch.get("nodes"), ppn=job.batch.get("ppn"), walltime=job.batch.get("walltime"),
        queue=job.batch.get("queue"),
    )


def submit(script: Path) -> str:
    """``sbatch script``; the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ValueError("sbatch not found on PATH: runJob.py submits to Slurm")
    done = subprocess.run([sbatch, str(script)], capture_output=True, text=True, cwd=script.parent, timeout=120)
    if done.returncode != 0:
        raise ValueError(f"sbatch {script} failed ({done.returncode}): {done.stderr.strip()}")
    match = re.search(r"Submitted batch job (\d+)", done.stdout)
    return match.group(1) if match else done.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        job = parse_job(argv)
        job.rundir.mkdir(parents=True, exist_ok=True)
        script = job.rundir / "batch.sh"
        script.write_text(render(job))
        with open(job.rundir / "run_command.txt", "a") as record:
            record.write(shlex.join([PROG, *argv]) + "\n")
        print(submit(script))
    except (ValueError, OSError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
