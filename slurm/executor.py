"""The SLURM executor: a grid's cells as one job array, submitted through submitit.

One invocation submits one array (``--array=0-N%P``, P the profile's
``array_parallelism``), one task per cell, each running :class:`slurm.job.TrainCell`
on a prepared run directory. Each run directory gets ``job.json`` (job id, array
index, submission time, log), so any later invocation, from any shell, knows which
job owns the run: it follows a queued or running job instead of submitting the cell
again, and records a job that ended badly as the run's failure.

submitit's files (pickles, logs) go to ``STORE/.slurm/``, on the same shared
filesystem as the runs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from ablations.executors import Detached, Executor, JobView, Outcome, SubmissionError, Task
from ablations.store import RunLock, holder, read_job
from sagan.training import faults, rundir
from slurm import jobs, journal
from slurm.job import TrainCell
from slurm.profile import Profile, sbatch_parameters

# Which profile key a refusal is about, by the words sbatch uses for it.
_REFUSED_KEYS = (
    ("partition", ("partition",)),
    ("account", ("account",)),
    ("qos", ("qos",)),
    ("time", ("time limit",)),
    ("mem_gb", ("memory",)),
    ("gpus_per_node", ("gres", "gpu")),
    ("constraint", ("constraint", "feature")),
    ("nodes", ("node count",)),
    ("cpus_per_task", ("cpu count", "cpus")),
)


def fault(point: str) -> None:
    """A fault-injection point for tests, off unless ``SAGAN_FAULT`` names it
    (:mod:`sagan.training.faults`): ``after-sbatch`` kills the submitting process (SIGKILL, as
    a crash would) the moment sbatch has accepted an array, before its job id is
    written anywhere."""
    if faults.hit(point):
        os.kill(os.getpid(), signal.SIGKILL)


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(
        self,
        out: Path,
        profile: Profile | None = None,
        detach: bool = False,
        tty: bool | None = None,
        job_name: str = "sagan",
    ):
        self.out = Path(out)
        self.folder = self.out / ".slurm"
        self.profile = profile
        self.detach = detach
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.job_name = job_name
        self._lock: RunLock | None = None

    # -- reading jobs -----------------------------------------------------------------
    @property
    def _grace_s(self) -> float:
        return self.profile.vanish_grace_s if self.profile else 120.0

    def jobs(self, run_dirs: list[Path]) -> dict[Path, JobView]:
        return jobs.views(run_dirs, self._grace_s)

    def settle(self, run_dirs: list[Path]) -> dict[Path, JobView]:
        # From here until this invocation's jobs are recorded, no other invocation on
        # this store may plan: both would see the same cells without a job and submit
        # them twice.
        self._hold_submission_lock()
        # Arrays an earlier invocation submitted and did not record (it crashed).
        for line in journal.reconcile(self.folder):
            print(f"note: {line}", file=sys.stderr)
        live = {}
        for d, view in self.jobs(run_dirs).items():
            if view.live:
                live[d] = view
            else:
                jobs.settle(d, view)
        return live

    # -- submitting -------------------------------------------------------------------
    def _hold_submission_lock(self, timeout_s: float = 120.0) -> None:
        if self._lock is not None:
            return
        lock = RunLock(self.folder)  # STORE/.slurm/.lock
        end = time.time() + timeout_s
        while not lock.acquire():
            if time.time() > end:
                raise RuntimeError(
                    f"another ablations.run is submitting to {self.out} "
                    f"({holder(self.folder)}); try again when it has submitted"
                )
            time.sleep(0.2)
        self._lock = lock

    def close(self) -> None:
        self._release_submission_lock()

    def _release_submission_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _parameters(self, kind: str = "train") -> dict:
        if self.profile is None:
            raise ValueError("the SLURM executor needs a profile to submit")
        params = dict(sbatch_parameters(self.profile), job_name=f"{self.job_name}-{kind}")
        if kind == "score":  # a short job: the run is trained, only its scores are owed
            params["time"] = self.profile.score_time
        return params

    def _submitit(self, kind: str = "train"):
        import submitit

        ex = submitit.SlurmExecutor(
            folder=self.folder,
            max_num_timeout=self.profile.max_requeues,
            python=self.profile.python,
        )
        ex.update_parameters(**self._parameters(kind))
        return ex

    def preview(self, n_tasks: int) -> str:
        """The sbatch script submitit would send for ``n_tasks`` cells."""
        from submitit.slurm.slurm import _make_sbatch_string

        python = self.profile.python or shlex.quote(sys.executable)
        command = f"{python} -u -m submitit.core._submit {shlex.quote(str(self.folder))}"
        return _make_sbatch_string(
            command=command,
            folder=self.folder,
            map_count=n_tasks if n_tasks > 1 else None,
            **self._parameters(),
        )

    def submit(self, tasks: list[Task]) -> dict[Path, JobView]:
        """Submit ``tasks`` as one array (two when some only score: those get the
        profile's ``score_time``); record each job in its run directory.

        Every array is written down in the journal before sbatch runs and submitted
        held; only once all are accepted and every ``job.json`` names its job are they
        released. So a refused second array leaves nothing running (the first is
        cancelled before it could start), and a crash anywhere leaves either no job or
        one the next invocation finds (:func:`slurm.journal.reconcile`).

        Raises:
            SubmissionError: sbatch refused an array: SLURM's message and the profile
                key(s) it is about. Nothing was left running.
        """
        self._hold_submission_lock()
        accepted: list[journal.Entry] = []
        try:
            for kind in ("train", "score"):
                group = [t for t in tasks if t.kind == kind]
                if group:
                    accepted.append(self._sbatch(group, kind))
        except SubmissionError as e:
            raise SubmissionError(f"{e}\n{self._withdraw(accepted)}") from None
        out = {}
        for entry in accepted:
            journal.record_runs(entry)
            for d, job_id in zip(entry.run_dirs, journal.job_ids(entry), strict=True):
                out[Path(d)] = JobView(job_id, "queued", "", "", Path(read_job(d)["log"]))
        journal.release([e.job_id for e in accepted])
        for entry in accepted:
            entry.path.unlink(missing_ok=True)
        self._release_submission_lock()
        return out

    def _sbatch(self, tasks: list[Task], kind: str) -> journal.Entry:
        """One array, held, written down in the journal before and after sbatch."""
        import submitit
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        entry = journal.begin(
            self.folder,
            f"{self.job_name}-{kind}",
            [t.run_dir for t in tasks],
            {"folder": str(self.folder), "profile": self.profile.name, "kind": kind},
        )
        ex = self._submitit(kind)
        ex.update_parameters(job_name=entry.job_name)
        ex.parameters["additional_parameters"] = dict(
            ex.parameters.get("additional_parameters", {}), hold=True
        )
        try:
            # Submitting from inside an allocation must not pass its SLURM_* to the jobs.
            with submitit.helpers.clean_env(), ex.batch():
                gpus, wait_s = self.profile.gpus_per_node, self.profile.collective_timeout_s
                submitted = [
                    ex.submit(TrainCell(t.run_dir, t.rescore, gpus, wait_s)) for t in tasks
                ]
        except (FailedJobError, FailedSubmissionError) as e:
            entry.path.unlink(missing_ok=True)
            raise SubmissionError(self._refusal(kind, len(tasks), str(e))) from None
        fault("after-sbatch")
        entry.job_id = submitted[0].job_id.split("_")[0]
        entry.save()
        return entry

    def _refusal(self, kind: str, n: int, said: str) -> str:
        """sbatch's refusal in one message: what was refused, SLURM's words, and the
        profile key(s) they are about with the values sent."""
        said = " ".join(ln.removeprefix("sbatch: error: ").strip() for ln in said.splitlines())
        what = "training" if kind == "train" else "scoring"
        keys = [k for k, words in _REFUSED_KEYS if any(w in said.lower() for w in words)]
        keys = ["score_time" if k == "time" and kind == "score" else k for k in keys]
        if keys:
            about = ", ".join(f"{k} = {getattr(self.profile, k)!r}" for k in keys)
            about = f"profile key {about}"
        else:
            about = "one of the profile's sbatch parameters (see --dry-run for the script)"
        return (
            f"sbatch refused the {what} array of {n} cell(s): {said}\n"
            f"  {about}, on the SLURM profile {self.profile.source}"
        )

    def _withdraw(self, accepted: list[journal.Entry]) -> str:
        """Cancel arrays accepted before a later one was refused (held: none has
        started); one that cannot be cancelled is recorded in its runs' job.json."""
        if not accepted:
            return "nothing was submitted."
        ids = [e.job_id for e in accepted]
        r = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=30)
        if r.returncode == 0:
            for entry in accepted:
                entry.path.unlink(missing_ok=True)
            return (
                f"job {', '.join(ids)}, accepted before it, was cancelled: nothing was submitted."
            )
        for entry in accepted:
            journal.record_runs(entry)
            entry.path.unlink(missing_ok=True)
        journal.release(ids)
        return (
            f"job {', '.join(ids)}, accepted before it, could not be cancelled "
            f"({r.stderr.strip()}): it is recorded in its runs' job.json and runs."
        )

    # -- following --------------------------------------------------------------------
    def run(self, tasks: list[Task], follow: list[Task] = ()) -> list[Outcome]:
        from ablations.display import Display

        try:
            submitted = self.submit(list(tasks))
        finally:
            self._release_submission_lock()
        arrays: dict[str, int] = {}
        for view in submitted.values():
            array = view.job_id.split("_")[0]
            arrays[array] = arrays.get(array, 0) + 1
        for array, n in arrays.items():
            print(f"submitted {n} cell(s) as SLURM job {array}; logs in {self.folder}")
        if self.detach:
            raise Detached(f"{len(submitted) + len(follow)} job(s) left running on the cluster")
        waiting = {t.run_dir: t for t in [*tasks, *follow]}
        outcomes: list[Outcome] = []
        display = Display(len(waiting), tty=self.tty)
        for t in waiting.values():
            display.started(t)
        failures, last_error = 0, ""
        try:
            while waiting:
                try:
                    views = self.jobs(list(waiting))
                    failures = 0
                    for d in [d for d in waiting if d not in views]:
                        # Its job record is gone (the run was moved aside): nothing to wait for.
                        state = rundir.read_status(d).get("state", "pending")
                        outcome = Outcome(waiting.pop(d), state, 1)
                        outcomes.append(outcome)
                        display.finished(outcome)
                except RuntimeError as e:  # sacct down for a moment: say so, go on
                    failures += 1
                    if str(e) != last_error or failures % 30 == 0:
                        display.note(f"warning: {e}; retrying")
                        last_error = str(e)
                    views = {}
                for d, view in views.items():
                    if view.live:
                        continue
                    task = waiting.pop(d)
                    state = jobs.settle(d, view)
                    outcome = Outcome(task, state, 0 if view.state == "completed" else 1, view.log)
                    outcomes.append(outcome)
                    display.finished(outcome)
                display.tick(list(waiting.values()))
                if waiting:
                    time.sleep(self.profile.poll_s if self.profile else 5.0)
        except KeyboardInterrupt:
            raise Detached(f"{len(waiting)} job(s) left running on the cluster") from None
        finally:
            display.close()
        return outcomes
