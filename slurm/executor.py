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

import shlex
import sys
import time
from pathlib import Path

from ablations.executors import Detached, Executor, JobView, Outcome, Task
from ablations.store import RunLock, holder, write_job
from sagan import rundir
from slurm import jobs
from slurm.job import TrainCell
from slurm.profile import Profile, sbatch_parameters


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
        profile's ``score_time``); record each job in its run directory."""
        self._hold_submission_lock()
        out = {}
        for kind in ("train", "score"):
            group = [t for t in tasks if t.kind == kind]
            if group:
                out.update(self._submit_array(group, kind))
        self._release_submission_lock()
        return out

    def _submit_array(self, tasks: list[Task], kind: str) -> dict[Path, JobView]:
        import submitit

        ex = self._submitit(kind)
        # Submitting from inside an allocation must not pass its SLURM_* to the jobs.
        with submitit.helpers.clean_env(), ex.batch():
            gpus = self.profile.gpus_per_node
            submitted = [ex.submit(TrainCell(t.run_dir, t.rescore, gpus)) for t in tasks]
        now = time.time()
        out = {}
        for i, (task, job) in enumerate(zip(tasks, submitted, strict=True)):
            log = Path(job.paths.stdout)
            write_job(
                task.run_dir,
                {
                    "executor": "slurm",
                    "job_id": job.job_id,
                    "array_job_id": job.job_id.split("_")[0],
                    "array_index": i if "_" in job.job_id else None,
                    "submitted": rundir.now(),
                    "submitted_at": now,
                    "log": str(log),
                    "folder": str(self.folder),
                    "profile": self.profile.name,
                    "kind": kind,
                },
            )
            out[task.run_dir] = JobView(job.job_id, "queued", "", "", log)
        return out

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
