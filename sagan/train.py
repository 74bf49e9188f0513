"""Train one SAGAN: ``python -m sagan.train CONFIG.yaml [key=value ...] --out RUN_DIR``.

The loop is the paper's (Zhang et al. 2018, section 5): hinge loss, Adam with
separate learning rates for G and D (TTUR), ``n_dis`` D steps per G step, optional
EMA of G. ``train.steps`` counts G steps. A run directory that already has
checkpoints is resumed from the newest readable one; a resumed run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sagan import rundir
from sagan.batches import Batches
from sagan.checkpoint import (
    atomic_write_text,
    list_checkpoints,
    load_latest,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from sagan.config import (
    Config,
    ConfigError,
    flatten,
    load_config,
    resume_conflicts,
    to_dict,
    to_yaml,
    yaml_load,
)
from sagan.data import DataError, build_dataset
from sagan.losses import LOSSES
from sagan.metrics.errors import MetricsError
from sagan.models import attention_gammas, build_models
from sagan.progress import Progress

log = logging.getLogger("sagan.train")


class Diverged(Exception):
    def __init__(self, step: int):
        super().__init__(f"non-finite loss at G step {step}")
        self.step = step


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA device is visible")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preflight(cfg: Config) -> None:
    """Fail now, not after hours of training, on what is missing at the start.

    Checks that the training data (and the evaluation's reference split) is on disk
    and that the Inception weights exist when the config will evaluate with them.

    Raises:
        DataError, MetricsError: the one clear message of the first problem found.
    """
    from sagan.data import check_available
    from sagan.metrics.protocol import INCEPTION_METRICS, REFERENCE_METRICS
    from sagan.metrics.weights import inception_weights_path

    check_available(cfg.data, "train")
    ev = cfg.eval
    will_eval = ev.metrics and (ev.every is not None or ev.at_end)
    if will_eval and any(m in INCEPTION_METRICS for m in ev.metrics):
        inception_weights_path(ev.inception_weights)
        if any(m in REFERENCE_METRICS for m in ev.metrics):
            check_available(cfg.data, ev.reference.split)


def check_resume(run_dir: Path, cfg: Config) -> None:
    """Refuse to continue a run whose computation-relevant settings changed."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file() or not list_checkpoints(run_dir):
        return  # nothing computed yet that a new config could contradict
    saved = yaml_load(saved_path.read_text())
    new = to_dict(cfg)
    diff = resume_conflicts(saved, new)
    if diff:
        a, b = flatten(saved), flatten(new)
        lines = "\n".join(f"  {k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
        raise ConfigError(
            f"{run_dir} holds a run with a different config; refusing to resume it.\n{lines}\n"
            "Use a new --out directory, or change only keys that do not alter what was computed "
            "(train.steps, logging, sampling, checkpoint and evaluation cadence)."
        )


class Trainer:
    """Owns the models, optimizers and data stream of one run."""

    def __init__(self, cfg: Config, run_dir: Path, progress: bool | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rank = int(os.environ.get("RANK", "0"))
        self.main = self.rank == 0
        self.device = pick_device(cfg.train.device)
        self.cuda = self.device.type == "cuda"
        t = cfg.train
        seed_everything(t.seed)
        self.dataset = build_dataset(cfg.data, "train")
        self.num_classes = self.dataset.num_classes if cfg.data.conditional else 0
        G, D = build_models(cfg.model, cfg.data.resolution, self.num_classes)
        fmt = torch.channels_last if (self.cuda and t.channels_last) else torch.contiguous_format
        self.G = G.to(self.device, memory_format=fmt)
        self.D = D.to(self.device, memory_format=fmt)
        self.G_ema = (
            copy.deepcopy(self.G).eval().requires_grad_(False) if t.ema is not None else None
        )
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=t.lr_g, betas=t.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=t.lr_d, betas=t.betas)
        self.loss_d, self.loss_g = LOSSES[t.loss]
        self.step = 0
        self.consumed = 0
        self.restored_from: Path | None = None
        # Fixed sample inputs come from their own generator: sampling never moves the
        # training RNG, so changing sample_every cannot change the result.
        g = torch.Generator().manual_seed(t.seed + 7919)
        self.sample_z = torch.randn(t.n_samples, cfg.model.z_dim, generator=g).to(self.device)
        nc = max(self.num_classes, 1)
        self.sample_y = (torch.arange(t.n_samples) % nc).to(self.device)
        self.progress = Progress(t.steps, enabled=self.main, tty=progress)

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
            "rng": rng_state(),
            "num_classes": self.num_classes,
            "config": to_dict(self.cfg),
        }

    def restore(self) -> None:
        found = load_latest(self.run_dir, map_location=self.device)
        if found is None:
            # Killed before its first checkpoint: whatever it logged is recomputed.
            rundir.truncate_jsonl(self.run_dir / "metrics.jsonl", 0)
            return
        state, path = found
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state["G_ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.consumed = state["consumed_batches"]
        self.restored_from = path
        # Anything logged after this checkpoint is recomputed, bit for bit, from here.
        rundir.truncate_jsonl(self.run_dir / "metrics.jsonl", self.step)

    def save(self) -> None:
        if self.main:
            save_checkpoint(
                self.run_dir, self.step, self.state_dict(), keep=self.cfg.train.ckpt_keep
            )

    # -- the loop ----------------------------------------------------------------
    def _autocast(self):
        if self.cuda and self.cfg.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _labels(self, n: int) -> torch.Tensor:
        if self.num_classes > 0:
            return torch.randint(0, self.num_classes, (n,), device=self.device)
        return torch.zeros(n, dtype=torch.long, device=self.device)

    def _ema_update(self) -> None:
        t = self.cfg.train
        decay = t.ema if self.step > t.ema_start else 0.0
        with torch.no_grad():
            ema_p = list(self.G_ema.parameters())
            torch._foreach_lerp_(ema_p, list(self.G.parameters()), 1.0 - decay)
            for be, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
                be.copy_(b)

    def train_step(self, batches: Batches, first_bad: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.cfg.train
        B, z_dim = t.batch_size, self.cfg.model.z_dim
        for _ in range(t.n_dis):
            x, y = next(batches)
            z = torch.randn(B, z_dim, device=self.device)
            y_fake = self._labels(B)
            with self._autocast():
                with torch.no_grad():
                    fake = self.G(z, y_fake)
                # One D forward over real and fake: one power iteration per D step.
                d_out = self.D(torch.cat([x, fake.to(x.dtype)]), torch.cat([y, y_fake])).float()
                d_real, d_fake = d_out[:B], d_out[B:]
                loss_d = self.loss_d(d_real, d_fake)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        z = torch.randn(B, z_dim, device=self.device)
        y_fake = self._labels(B)
        self.D.requires_grad_(False)  # the G step needs no gradient for D's weights
        with self._autocast():
            loss_g = self.loss_g(self.D(self.G(z, y_fake), y_fake).float())
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        self.step += 1
        self.consumed = batches.consumed
        if self.G_ema is not None:
            self._ema_update()
        # Record the first non-finite step on the device: no host sync here.
        bad = ~(torch.isfinite(loss_d) & torch.isfinite(loss_g))
        first_bad.copy_(torch.where(bad & (first_bad < 0), self.step, first_bad))
        return {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": d_real.mean().detach(),
            "d_fake": d_fake.mean().detach(),
        }

    def sample(self) -> None:
        from torchvision.utils import save_image

        G = self.G_ema if self.G_ema is not None else self.G
        was_training = G.training
        G.eval()  # eval: BN running stats, and SN does not advance its power iteration
        with torch.no_grad(), self._autocast():
            imgs = G(self.sample_z, self.sample_y).float()
        G.train(was_training)
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        tmp = out / f".step-{self.step:09d}.png"
        save_image(imgs.add(1).div(2).clamp(0, 1), tmp, nrow=int(len(imgs) ** 0.5))
        os.replace(tmp, out / f"step-{self.step:09d}.png")

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
        from sagan.metrics import evaluate_generator

        use_ema = self.cfg.eval.use_ema and self.G_ema is not None
        G = self.G_ema if use_ema else self.G
        record = evaluate_generator(
            G, self.cfg, step=self.step, device=self.device, ema=use_ema, run_dir=self.run_dir
        )
        record["origin"] = "train"
        rundir.append_jsonl(self.run_dir / "eval.jsonl", record)
        self.progress.write(
            f"eval step {self.step}: "
            + ", ".join(f"{k}={v:.4g}" for k, v in record["metrics"].items())
        )
        rundir.update_best(status, record)

    def run(self) -> str:
        cfg, t = self.cfg, self.cfg.train
        status = rundir.read_status(self.run_dir)
        self.restore()
        status.update(
            state="running", step=self.step, steps=t.steps, attempts=status.get("attempts", 0) + 1
        )
        status.pop("error", None)
        if self.restored_from is not None:
            self.progress.write(f"resuming from {self.restored_from.name} (G step {self.step})")
        rundir.write_status(self.run_dir, status)
        writer = None
        try:
            batches = Batches(
                self.dataset,
                t.batch_size,
                t.seed,
                self.device,
                consumed=self.consumed,
                num_workers=cfg.data.num_workers,
                channels_last=self.cuda and t.channels_last,
            )
            writer = self._tensorboard()
            first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
            self.progress.start(self.step)
            if self.main and self.step > 0 and self._eval_due(self.step):
                # Killed while evaluating a checkpointed step: that evaluation is still owed.
                self.evaluate(status)
                rundir.write_status(self.run_dir, status)
            t0, s0 = time.perf_counter(), self.step
            while self.step < t.steps:
                vals = self.train_step(batches, first_bad)
                s = self.step
                is_eval = self._eval_due(s)
                is_ckpt = s % t.ckpt_every == 0 or is_eval or s == t.steps
                if s % t.log_every == 0 or is_ckpt or s % t.sample_every == 0:
                    if int(first_bad) >= 0:  # the only host sync, at these steps
                        raise Diverged(int(first_bad))
                if s % t.log_every == 0 or s == t.steps:
                    dt = time.perf_counter() - t0
                    rec = self._log_record(vals, (s - s0) / max(dt, 1e-9))
                    t0, s0 = time.perf_counter(), s
                    if self.main:
                        rundir.append_jsonl(self.run_dir / "metrics.jsonl", rec)
                        if writer is not None:
                            for k, v in rec.items():
                                if isinstance(v, (int, float)) and k != "step":
                                    writer.add_scalar(k, v, s)
                        status.update(step=s)
                        rundir.write_status(self.run_dir, status)
                    self.progress.update(s, rec)
                if self.main and (s % t.sample_every == 0 or s == t.steps):
                    self.sample()
                if is_ckpt:
                    self.save()
                if self.main and is_eval:
                    self.evaluate(status)
                    rundir.write_status(self.run_dir, status)
            status.update(state="done", step=self.step)
        except Diverged as e:
            status.update(state="diverged", diverged_step=e.step, step=self.step)
            self.progress.write(f"diverged: {e}; recorded as a result, not a crash")
        except KeyboardInterrupt:
            status.update(state="interrupted", step=self.step)
            rundir.write_status(self.run_dir, status)
            raise
        except BaseException as e:
            status.update(state="failed", step=self.step, error=f"{type(e).__name__}: {e}")
            rundir.write_status(self.run_dir, status)
            raise
        finally:
            self.progress.close()
            if writer is not None:
                writer.close()
        rundir.write_status(self.run_dir, status)
        return status["state"]

    def _log_record(self, vals: dict[str, torch.Tensor], it_per_s: float) -> dict[str, Any]:
        keys = list(vals)
        numbers = torch.stack([vals[k].float() for k in keys]).tolist()
        rec: dict[str, Any] = {"step": self.step, **dict(zip(keys, numbers, strict=True))}
        rec["gamma_g"] = attention_gammas(self.G)
        rec["gamma_d"] = attention_gammas(self.D)
        rec["it_per_s"] = it_per_s
        rec["img_per_s"] = it_per_s * self.cfg.train.batch_size * self.cfg.train.n_dis
        return rec

    def _tensorboard(self):
        if not (self.cfg.train.tensorboard and self.main):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard: true needs the tensorboard package (pip install tensorboard)"
            ) from None
        return SummaryWriter(str(self.run_dir / "tb"))


def train(cfg: Config, run_dir: str | Path, progress: bool | None = None) -> str:
    """Train (or resume) the run in ``run_dir``; returns its final state.

    A run already ``done`` at ``train.steps``, or ``diverged``, is left as it is.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    check_resume(run_dir, cfg)
    status = rundir.read_status(run_dir)
    if status["state"] == "diverged" or (
        status["state"] == "done" and status.get("step", 0) >= cfg.train.steps
    ):
        return status["state"]
    preflight(cfg)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    try:
        trainer = Trainer(cfg, run_dir, progress=progress)
    except BaseException as e:
        # Failed before its loop (data, device, a broken checkpoint): say so on disk.
        status.update(
            state="failed", attempts=status.get("attempts", 0) + 1, error=f"{type(e).__name__}: {e}"
        )
        rundir.write_status(run_dir, status)
        raise
    return trainer.run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sagan.train", description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    p.add_argument("--out", required=True, help="run directory (resumed if it has checkpoints)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(to_yaml(cfg), end="")
            return 0
        state = train(cfg, args.out)
    except (ConfigError, DataError, MetricsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {state}")
    return 0 if state in rundir.FINAL_STATES else 1


if __name__ == "__main__":
    sys.exit(main())
