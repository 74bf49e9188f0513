"""The training loop of one SAGAN run: :class:`Trainer`.

The update itself (hinge loss, Adam with TTUR, ``n_dis`` D steps per G step, the EMA
of G) is :class:`sagan.training.step.TrainStep`; the loop around it owns the data stream, the
schedule, checkpoints, samples, evaluations and the run's status. ``train.steps``
counts G steps. A run directory that already has
checkpoints is resumed from the newest readable one; a resumed run ends with the
same weights as an uninterrupted one. :func:`sagan.train.train` is the entry point
that checks a run before handing it to a Trainer.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import torch

from sagan.config import Config, ConfigError, to_dict
from sagan.data.batches import Batches
from sagan.data.datasets import build_dataset
from sagan.data.identity import data_identity
from sagan.metrics.errors import EvaluationStopped
from sagan.nets.attnmaps import N_IMAGES
from sagan.nets.models import attention_gammas
from sagan.training import distributed, faults, rundir
from sagan.training.checkpoint import (
    CheckpointError,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sagan.training.outcome import Diverged, Stopped, record_failure, record_interruption
from sagan.training.progress import Progress
from sagan.training.samples import write_attention_maps, write_sample_grid
from sagan.training.setup import pick_device, sample_inputs, seed_everything
from sagan.training.step import TrainStep

log = logging.getLogger("sagan.train")


class Trainer:
    """The loop of one run around its :class:`~sagan.training.step.TrainStep`: data, schedule,
    checkpoints, samples, evaluations, status and resume."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        progress: bool | None = None,
        data_id: dict[str, Any] | None = None,
        stop: threading.Event | None = None,
    ):
        self.cfg = cfg
        # Set from outside (a signal handler before a time limit or a preemption): the
        # loop checkpoints at the next step boundary and stops, never mid-step; an
        # evaluation is abandoned at its next batch, and redone on resume.
        self.stop = stop
        self.run_dir = Path(run_dir)
        tc = cfg.train
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.is_main = self.rank == 0
        self.device = pick_device(tc.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.cuda.set_device(self.device)  # what the job joined its process group on
        seed_everything(tc.seed)  # the models' initialisation draws from the global RNG
        self.data_id = data_id or data_identity(cfg.data)
        self.dataset = build_dataset(cfg.data, "train")
        self.num_classes = self.dataset.num_classes if cfg.data.conditional else 0
        self.update = TrainStep(cfg, self.num_classes, self.device, self.rank, self.world)
        # The step's state, named here for checkpoints, sampling and evaluation.
        self.G, self.D, self.G_ema = self.update.G, self.update.D, self.update.G_ema
        self.opt_g, self.opt_d = self.update.opt_g, self.update.opt_d
        self.noise = self.update.noise
        self.step = 0
        self.consumed = 0
        self.restored_from: Path | None = None
        self.best_step: int | None = None  # the checkpoint final.best_by keeps
        self.on_main: distributed.OnMain | None = None  # rank 0's work, waited for; in _loop
        # Fixed sample inputs come from another: sampling never moves the training
        # noise, so changing sample_every cannot change the result.
        z, y = sample_inputs(cfg, self.num_classes)
        self.sample_z, self.sample_y = z.to(self.device), y.to(self.device)
        self.progress = Progress(tc.steps, enabled=self.is_main, tty=progress)

    # -- state ---------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "consumed_batches": self.consumed,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": {
                "noise": self.noise.get_state(),
                "process": rng_state(self.device),
                # Every rank's own (rank 0's is "process"); gathered by save().
                "process_per_rank": None,
            },
            "num_classes": self.num_classes,
            "config": to_dict(self.cfg),
            "data": self.data_id,
        }

    def restore(self) -> None:
        """Load the newest readable checkpoint, if any, into the models, optimizers and RNGs.

        Loaded onto the CPU, then copied to the device by ``load_state_dict``.

        Raises:
            CheckpointError: checkpoints exist but none loads, or one predates the
                saved noise generator (it cannot be resumed exactly).
        """
        found = load_latest(self.run_dir)
        if found is None:
            # Killed before its first checkpoint: whatever it logged is recomputed.
            if self.is_main:
                rundir.truncate_jsonl(self.run_dir / "metrics.jsonl", 0)
            return
        state, path = found
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        rng = state["rng"]
        if "noise" not in rng:
            raise CheckpointError(
                f"{path}: written by an older sagan-bench without the training noise generator; "
                "it cannot be resumed exactly. Start the run anew in a new directory."
            )
        if rng["noise"].numel() != self.noise.get_state().numel():
            raise CheckpointError(
                f"{path}: its training noise generator state has {rng['noise'].numel()} bytes, "
                f"not a CPU generator's {self.noise.get_state().numel()}: it was drawn on a GPU "
                "by an older sagan-bench and cannot be resumed exactly. Start the run anew."
            )
        self.noise.set_state(rng["noise"])
        per_rank = rng.get("process_per_rank")
        if per_rank is not None and len(per_rank) == self.world:
            set_rng_state(per_rank[self.rank], self.device)
        elif self.rank == 0:
            set_rng_state(rng["process"], self.device)
        self.step = state["step"]
        self.consumed = state["consumed_batches"]
        self.restored_from = path
        # Anything logged after this checkpoint is recomputed, bit for bit, from here.
        if self.is_main:
            rundir.truncate_jsonl(self.run_dir / "metrics.jsonl", self.step)

    def save(self) -> None:
        """Rank 0 writes the checkpoint, with every rank's RNG state (a collective),
        while the others wait (:meth:`_on_main`)."""
        per_rank = distributed.gather(rng_state(self.device)) if self.world > 1 else None

        def write() -> None:
            state = self.state_dict()
            state["rng"]["process_per_rank"] = per_rank
            save_checkpoint(
                self.run_dir,
                self.step,
                state,
                keep=self.cfg.train.ckpt_keep,
                protect={self.best_step} if self.best_step is not None else (),
            )

        self._on_main(write)

    def _on_main(self, work):
        """``work()`` on rank 0 while the other ranks wait for its result, however long
        it takes (:class:`sagan.training.distributed.OnMain`: a heartbeat, so the collective
        timeout bounds only a rank 0 that is gone). Inside :meth:`_loop` only."""
        assert self.on_main is not None, "rank 0's work is waited for inside the loop"
        return self.on_main.run(work)

    # -- the loop ----------------------------------------------------------------
    def _autocast(self):
        return self.update.autocast()

    def train_step(self, batches: Batches, first_bad: torch.Tensor) -> dict[str, torch.Tensor]:
        """One G step (with its D steps) of the run: :class:`sagan.training.step.TrainStep`."""
        vals = self.update(batches, first_bad, self.step + 1)
        self.step += 1
        self.consumed = batches.consumed
        return vals

    def sample(self) -> None:

        G = self.G_ema if self.G_ema is not None else self.G
        was_training = G.training
        G.eval()  # eval: BN running stats, and SN does not advance its power iteration
        with torch.no_grad(), self._autocast():
            imgs = G(self.sample_z, self.sample_y).float()
        G.train(was_training)
        write_sample_grid(self.run_dir, imgs, self.step)
        if self.step == self.cfg.train.steps:
            # The paper's Figure 1 for the final G: no RNG drawn, no state changed.
            k = N_IMAGES
            write_attention_maps(self.run_dir, G, self.sample_z[:k], self.sample_y[:k], self.step)

    def _eval_due(self, step: int) -> bool:
        ev = self.cfg.eval
        return (ev.every is not None and step % ev.every == 0) or (
            step == self.cfg.train.steps and ev.at_end
        )

    def evaluate(self, status: dict[str, Any]) -> None:
        """Score the current G with ``cfg.eval`` and record it, once per step."""
        records = rundir.read_jsonl(self.run_dir / "eval.jsonl")
        done = {r["step"] for r in records if r.get("origin", "train") == "train"}
        if self.step in done or not self.cfg.eval.metrics:
            return
        faults.raise_at(f"rank{self.rank}-eval")
        from sagan.metrics import evaluate_generator

        use_ema = self.cfg.eval.use_ema and self.G_ema is not None
        G = self.G_ema if use_ema else self.G
        record = evaluate_generator(
            G,
            self.cfg,
            step=self.step,
            device=self.device,
            ema=use_ema,
            run_dir=self.run_dir,
            stop=faults.signal_group_at_second_call(
                f"rank{self.rank}-eval-usr2", self._stop_evaluating
            ),
        )
        record["origin"] = "train"
        rundir.append_jsonl(self.run_dir / "eval.jsonl", record)
        self.progress.write(
            f"eval step {self.step}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items())
        )
        rundir.update_best(status, record)
        self.best_step = rundir.track_best_checkpoint(
            self.cfg.final, status, record, self.best_step
        )

    def _write_status(self, status: dict[str, Any]) -> None:
        if self.is_main:
            rundir.write_status(self.run_dir, status)

    def run(self) -> str:
        """Restore, train to ``train.steps``, and record the outcome in ``status.json``.

        Every start is an attempt; only a failure (any exception, in restoring as in
        training) counts in ``failures``. A stop by KeyboardInterrupt is ``interrupted``,
        and so is a stop requested through ``stop`` (counted in ``stops``), which
        returns ``interrupted`` after checkpointing the step it stopped at, unless the
        previous interruption left the same checkpoint (:func:`record_interruption`):
        then ``failed``.
        """
        tc = self.cfg.train
        status = rundir.read_status(self.run_dir)
        if self.is_main:
            rundir.replay_evaluations(self.cfg.final, self.run_dir, status)
        self.best_step = status.get("best_checkpoint", {}).get("step")
        started = time.time()
        status.update(
            state="running",
            steps=tc.steps,
            attempts=status.get("attempts", 0) + 1,
            attempt_started=started,
        )
        status.pop("error", None)
        self._write_status(status)
        if self.is_main:
            from sagan.training.provenance import environment

            env = environment(self.device, self.world)
            rundir.append_jsonl(self.run_dir / "env.jsonl", {"attempt": status["attempts"], **env})
        writer = None
        try:
            self.restore()
            status.update(step=self.step)
            if self.restored_from is not None:
                self.progress.write(f"resuming from {self.restored_from.name} (G step {self.step})")
            batches = Batches(
                self.dataset,
                tc.batch_size,
                tc.seed,
                self.device,
                consumed=self.consumed,
                num_workers=self.cfg.data.num_workers,
                channels_last=self.update.channels_last,
                shard=(self.rank, self.world),
            )
            writer = self._tensorboard()
            self._loop(batches, status, writer)
            status.update(state="done", step=self.step)
        except Diverged as e:
            status.update(state="diverged", diverged_step=e.step, step=self.step)
            self.progress.write(f"diverged: {e}; recorded as a result, not a crash")
        except Stopped as e:
            status["stops"] = status.get("stops", 0) + 1
            if record_interruption(status, self.step, step=self.step) == "failed":
                self.progress.write(f"{e}; {status['error']}")
            else:
                self.progress.write(f"{e}; resume continues from here")
        except KeyboardInterrupt:
            status.update(state="interrupted", step=self.step)
            self._write_status(status)
            raise
        except BaseException as e:
            error = f"{type(e).__name__}: {e}"
            if self.world > 1:
                # The rank that failed first says why; its peers then fail on a
                # collective (or srun ends them) with errors that say nothing, or
                # with PeerFailed, for which rank 0 records its own.
                if not isinstance(e, distributed.PeerFailed):
                    rundir.write_rank_error(self.run_dir, self.rank, error)
                error = (
                    rundir.first_rank_error(self.run_dir, started) or f"rank {self.rank}: {error}"
                )
            record_failure(status, error, step=self.step)
            self._write_status(status)
            raise
        finally:
            self.progress.close()
            if writer is not None:
                writer.close()
        self._write_status(status)
        return status["state"]

    def _loop(self, batches: Batches, status: dict[str, Any], writer) -> None:
        vote = distributed.StopVote()
        self.on_main = distributed.OnMain()
        try:
            self._steps(batches, status, writer, vote)
        finally:
            # Every rank started the vote in flight, so waiting for it cannot hang.
            vote.close()
            self.on_main = None

    def _steps(
        self, batches: Batches, status: dict[str, Any], writer, vote: distributed.StopVote
    ) -> None:
        tc = self.cfg.train
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        self.progress.start(self.step)
        if self.step > 0 and self._eval_due(self.step):
            # Killed or stopped while evaluating a checkpointed step: still owed.
            self._evaluate_or_stop(status)
        t0, s0 = time.perf_counter(), self.step
        while self.step < tc.steps:
            vals = self.train_step(batches, first_bad)
            s = self.step
            faults.raise_at(f"rank{self.rank}-step{s}")
            is_eval = self._eval_due(s)
            is_ckpt = s % tc.ckpt_every == 0 or is_eval or s == tc.steps
            if s % tc.log_every == 0 or is_ckpt or s % tc.sample_every == 0:
                # The only host sync, at these steps; every rank agrees on the step.
                if int(distributed.first_step(first_bad)) >= 0:
                    raise Diverged(int(first_bad))
            if s % tc.log_every == 0 or s == tc.steps:
                dt = time.perf_counter() - t0
                rec = self._log_record(vals, (s - s0) / max(dt, 1e-9))
                t0, s0 = time.perf_counter(), s
                if self.is_main:
                    rundir.append_jsonl(self.run_dir / "metrics.jsonl", rec)
                    if writer is not None:
                        for k, v in rec.items():
                            if isinstance(v, (int, float)) and k != "step":
                                writer.add_scalar(k, v, s)
                    status.update(step=s)
                    rundir.write_status(self.run_dir, status)
                self.progress.update(s, rec)
            if s % tc.sample_every == 0 or s == tc.steps:
                self._on_main(self.sample)
            if is_ckpt:
                self.save()
            faults.stall_at(f"stall-step{s}", self._asked_to_stop)
            if is_eval:
                self._evaluate_or_stop(status)
            if s < tc.steps and vote(self._asked_to_stop()):
                # A divergence not yet seen is seen now, at the step it happened.
                if int(distributed.first_step(first_bad)) >= 0:
                    raise Diverged(int(first_bad))
                if not is_ckpt:
                    self.save()
                status.update(step=s)
                raise Stopped(s)

    def _asked_to_stop(self) -> bool:
        """This process's stop flag (a host flag, no sync). Under DDP the signal may
        reach the ranks at different steps: the loop stops where they agree
        (:class:`sagan.training.distributed.StopVote`)."""
        return self.stop is not None and self.stop.is_set()

    def _stop_evaluating(self) -> bool:
        """Asked before each batch of an evaluation: a stop request, or (rank 0 under
        DDP) a peer that is gone, whose error then ends the run."""
        return self._asked_to_stop() or (self.on_main is not None and self.on_main.lost)

    def _evaluate_or_stop(self, status: dict[str, Any]) -> None:
        """Rank 0 evaluates the checkpointed step while the other ranks wait
        (:meth:`_on_main`, however long it takes).

        Only rank 0's stop flag abandons the evaluation (SLURM signals every task, and a
        flag of another rank alone is agreed at the next step's vote).

        Raises:
            Stopped: a stop was asked for during the evaluation, which was abandoned
                (nothing recorded); the resumed run does it again from this step.
        """

        def evaluate() -> bool:
            try:
                self.evaluate(status)
            except EvaluationStopped as e:
                self.progress.write(str(e))
                return True
            rundir.write_status(self.run_dir, status)
            return False

        # The result also tells the other ranks whether rank 0 stopped.
        if self._on_main(evaluate):
            raise Stopped(self.step)

    def _log_record(self, vals: dict[str, torch.Tensor], it_per_s: float) -> dict[str, Any]:
        keys = list(vals)
        stacked = torch.stack([vals[k].float() for k in keys])
        # Under DDP: the mean over the ranks' equal slices, i.e. the global batch's value.
        numbers = distributed.mean(stacked).tolist()
        rec: dict[str, Any] = {"step": self.step, **dict(zip(keys, numbers, strict=True))}
        rec["gamma_g"] = attention_gammas(self.G)
        rec["gamma_d"] = attention_gammas(self.D)
        rec["it_per_s"] = it_per_s
        rec["img_per_s"] = it_per_s * self.cfg.train.batch_size * self.cfg.train.n_dis
        return rec

    def _tensorboard(self):
        if not (self.cfg.train.tensorboard and self.is_main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard: true needs the tensorboard package (pip install tensorboard)"
            ) from None
        return SummaryWriter(str(self.run_dir / "tb"))
