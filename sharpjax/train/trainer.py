"""The training loop: prompts -> rollout -> reward -> train step -> validation -> checkpoint.

One process per host runs `train(config, workdir)`. Everything inside a step that can be
jitted is (the sampler, the reward/advantage computation, the sharded update); the
verifier runs on the host between them because math-verify is Python/sympy.

Randomness: the key of step s is `fold_in(key(seed), s)` and the data order is the prompt
iterator's seeded permutation, both stored in the checkpoint, so a run killed after step N
and resumed reproduces the uninterrupted run bit for bit (tests/train/test_trainer.py).

Faults: one process per workdir (`train.lock.WorkdirLock`); SIGTERM and Ctrl-C checkpoint at
the next step boundary and return `interrupted` (a second Ctrl-C stops at once); a damaged
newest checkpoint is moved aside and the newest intact one resumed; `train.max_skipped_updates`
non-finite updates in a row stop the run (`TrainingDiverged`) with the last checkpoint exported.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sharpjax.errors import TrainingDiverged
from sharpjax.models.hf import save_model
from sharpjax.parallel import BATCH_AXES, batch_sharding, on_mesh, put_global, replicated, to_host
from sharpjax.rollout.sampler import SamplingConfig, sample, sampling_config_for, trim_padding
from sharpjax.rollout.scoring import rows_per_micro_batch
from sharpjax.rollout.text import decode_responses, encode_prompts, fit_sampling
from sharpjax.tasks import Task, build_task
from sharpjax.train.checkpoint import abstract_like, open_run_checkpoints
from sharpjax.train.compiles import CompileLog, compile_budget, widest_width, width_step
from sharpjax.train.config import ConfigError, RunConfig
from sharpjax.train.load import load_models, load_run_tokenizer, overlong_train_prompts
from sharpjax.train.lock import WorkdirLock
from sharpjax.train.metrics import MetricsLogger, format_metrics
from sharpjax.train.step import (
    assemble_rows,
    build_step,
    cast_params,
    dispatch_grouped_reference,
    length_grouped_update,
)

log = logging.getLogger(__name__)

PROGRESS_KEYS = ("reward/reward", "reward/task", "kl_to_base", "response_length", "tokens_per_s", "step_s")


@dataclasses.dataclass
class TrainResult:
    """What `train` leaves behind (all of it is also on disk under `workdir`)."""

    workdir: str
    last_step: int
    best_step: int | None
    validation: dict[int, dict[str, float]]
    export_dirs: dict[str, str]
    interrupted: bool = False


class _StopFlag:
    """Set by SIGTERM or Ctrl-C so the loop checkpoints and exits at the next step boundary.

    A second Ctrl-C raises KeyboardInterrupt at once (losing the work since the last checkpoint).
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.warning("received %s: checkpointing and stopping after this step%s", name,
                    " (Ctrl-C again to stop now)" if signum == signal.SIGINT else "")
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _step_key(base_key: jax.Array, step: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(base_key, step), stream)


def _sampling(config: RunConfig, model_config, tokenizer, *, eval: bool = False) -> SamplingConfig:
    """The rollout's (or validation's) sampling settings; `rollout.text.fit_sampling` sizes each batch.

    Without a fixed `max_new_tokens`, each response may use `rollout.max_total_length` minus its
    own prompt's length (the paper's `max_total_sequence_length`), whatever the other prompts of
    its batch are. Validation samples at T = 1 (the paper's evaluation) whatever the training
    temperature.
    """
    r = config.rollout
    fixed = config.eval.max_new_tokens if eval and config.eval.max_new_tokens is not None else r.max_new_tokens
    return sampling_config_for(
        model_config, tokenizer, max_new_tokens=fixed if fixed is not None else r.max_total_length,
        max_total_length=None if fixed is not None else r.max_total_length,
        num_samples=config.eval.num_samples if eval else r.samples_per_prompt,
        temperature=1.0 if eval else r.temperature, top_p=r.top_p, top_k=r.top_k, ignore_eos=r.ignore_eos,
    )


def _check_resolved(config: RunConfig) -> None:
    """The plan's choices ("auto") are made above the trainer (the launcher's `preflight_run`): here, only their result."""
    auto = [f"config.{k}='auto'" for k, v in (("train.remat", config.train.remat),
                                             ("rollout.chunk_prompts", config.rollout.chunk_prompts)) if v == "auto"]
    if auto:
        raise ConfigError(
            f"{' and '.join(auto)} is not resolved: call `config, _ = sharpjax.plan.preflight_run(config)` before "
            "train()/Trainer (the launcher, python -m sharpjax.train, does), or set a value."
        )


class Trainer:
    """Holds the models, mesh, jitted functions and logs of one run; `run()` trains."""

    def __init__(self, config: RunConfig, workdir: str, *, config_dict: dict | None = None, progress: bool = True):
        _check_resolved(config)
        self.config = config
        self.workdir = workdir
        self.progress = progress
        self.config_dict = config_dict if config_dict is not None else config.to_dict()
        os.makedirs(workdir, exist_ok=True)
        # Before anything slow: a second process on this workdir stops here, in one line.
        self._lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
        try:
            # The data flow, one call into one module each: tokenizer -> task -> usable prompts -> models
            # (train/load.py, tasks) -> step (train/step.py) -> checkpoints (train/checkpoint.py). The
            # plan's choices came resolved (`_check_resolved`). The data before the weights: a bad
            # training file fails in seconds, and prompts no bucket holds are dropped now, never met
            # mid-run (where every resume would meet them again).
            self.tokenizer = load_run_tokenizer(config)
            self.task: Task = build_task(config, self.tokenizer)
            skip = overlong_train_prompts(self.tokenizer, self.task, config.rollout, config.data)
            self.model, self.mesh, params, self.ref_params = load_models(config)
            self.step_fns, self.state = build_step(self.model, params, self.mesh, reward=config.reward,
                                                   loss=config.loss, optim=config.optim, train=config.train)
            del params
            self.base_key = jax.random.key(config.train.seed)
            if self.mesh is not None:  # a global array, so every process checkpoints the same key
                data = put_global(np.asarray(jax.random.key_data(self.base_key)), replicated(self.mesh))
                self.base_key = jax.random.wrap_key_data(data)
            # Every compile counted, the loop programs' logged with shape and time (train/compiles.py).
            self.compile_log = CompileLog()
            log.info("compiles: %s", compile_budget(config))
            self.iterator = self.task.train_iterator(config.rollout.prompts_per_step, config.train.seed, skip=skip)
            self.best_metric = f"val/{config.data.validation[0]}/{config.eval.metric}" if self.task.validation else None
            self.checkpointer, restored = open_run_checkpoints(
                os.path.join(workdir, "checkpoints"), keep_last=config.train.keep_last, best_metric=self.best_metric,
                abstract_state=abstract_like(self._checkpoint_tree()), config_dict=self.config_dict,
            )
            self.resumed, self.start_step = restored is not None, 0
            if self.resumed:
                step, tree, meta = restored
                self.state, self.base_key = tree["train"], tree["key"]
                self.iterator.restore(meta["iterator"])
                self.start_step = int(meta["step"])
                log.info("resumed from %s at step %d", self.checkpointer.directory, self.start_step)
            # Records past the restored step (or all of them, when there is no checkpoint: a run
            # killed before its first one) belong to work that is redone: dropped, not duplicated.
            self.logger = MetricsLogger(workdir, resume_step=self.start_step if self.resumed else -1)
            if not self.resumed:
                self.logger.log(0, {"data/train_problems": len(self.task.train) - len(skip),
                                    "data/dropped_long_prompts": len(skip)})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the workdir lock (idempotent; the process exiting does the same)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if getattr(self, "compile_log", None) is not None:
            self.compile_log.close()

    # ---- checkpoints --------------------------------------------------------------
    def _checkpoint_tree(self) -> dict:
        return {"train": self.state, "key": self.base_key}

    def _save(self, step: int, metrics: dict | None) -> None:
        meta = {"step": step, "iterator": self.iterator.state(), "config": self.config_dict}
        self.checkpointer.save(step, self._checkpoint_tree(), meta=meta, metrics=metrics)

    # ---- one step -----------------------------------------------------------------
    def _row_shards(self) -> int:
        return 1 if self.mesh is None else math.prod(self.mesh.shape[a] for a in BATCH_AXES)

    def _put_rows(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        return put_global(x, batch_sharding(self.mesh, x.ndim))

    def rollout_and_update(self, step: int) -> dict[str, Any]:
        with on_mesh(self.mesh):  # the model's activation constraints need the mesh (parallel.on_mesh)
            return self._rollout_and_update(step)

    def _rollout_and_update(self, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        problems = self.iterator.next()
        prompts = [self.task.render(p.problem) for p in problems]
        tokens, mask = encode_prompts(self.tokenizer, prompts, buckets=self.config.rollout.prompt_buckets)
        try:  # every row's own budget: max_total_length minus its prompt, not the batch's bucket
            sampling = fit_sampling(_sampling(self.config, self.model, self.tokenizer), mask.sum(-1))
        except ValueError as e:
            raise ConfigError(f"config.rollout.max_total_length: {e}") from None
        policy = cast_params(self.state.params, self.model.jnp_dtype)
        chunk = self.config.rollout.chunk_prompts or len(tokens)
        # One sampler call per chunk of prompts: the KV cache is per call (config.rollout.chunk_prompts).
        shape = (min(chunk, len(tokens)), tokens.shape[1], sampling.max_new_tokens)  # prompts, bucket, allocation
        with self.compile_log.program("sampler", shape, "sample"):
            parts = [
                sample(
                    policy, self._put_rows(tokens[i : i + chunk]), self._put_rows(mask[i : i + chunk]),
                    _step_key(self.base_key, step, 0) if i == 0 else _step_key(self.base_key, step, 1000 + i // chunk),
                    config=self.model, sampling=sampling,
                )
                for i in range(0, len(tokens), chunk)
            ]
        del policy  # the bf16 copy would otherwise stay alive through the scoring and the update
        k = self.config.rollout.samples_per_prompt
        answers = [p.answer for p in problems for _ in range(k)]
        # The calls above are only dispatched: each chunk but the last is verified on the host while
        # the device decodes the next; the last one's after the reference scoring is dispatched.
        t_early = time.perf_counter()
        early = [self._verify(parts[j], answers[j * chunk * k:(j + 1) * chunk * k]) for j in range(len(parts) - 1)]
        t_early = time.perf_counter() - t_early
        if len(parts) > 1:
            parts = [p.replace(prompt_index=p.prompt_index + j * chunk) for j, p in enumerate(parts)]
        rollout = parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
        jax.block_until_ready(rollout.tokens)
        lengths = to_host(rollout.lengths)
        if self.config.train.trim_padding:
            rollout = trim_padding(rollout, tokens.shape[1], int(lengths.max()), width_step=width_step(self.config))
        t_rollout = time.perf_counter()

        # Only logged (the reward and loss do not need it): every config.train.kl_every steps.
        score_ref = self.step_fns.score_ref and (self.step_fns.needs_ref or step % self.config.train.kl_every == 0)
        ref_logp = grouped_ref = None
        if score_ref and self.step_fns.grouped is not None:  # config.train.group_by_length: as the update
            # Rows per group: the scoring's micro-batch at the widest batch of the run, so the program's
            # shape changes with its width only (one compile per width on the grid).
            budget = self.config.train.tokens_per_micro_batch
            rows = len(lengths) if budget is None else rows_per_micro_batch(
                len(lengths), widest_width(self.config), tokens_per_micro_batch=budget, row_shards=self._row_shards())
            grouped_ref = dispatch_grouped_reference(
                self.step_fns.ref_rows, self.ref_params, to_host(rollout.tokens), to_host(rollout.attention_mask),
                lengths, rows_per_group=rows, prompt_len=tokens.shape[1], width_step=width_step(self.config),
                put_rows=self._put_rows, program=self.compile_log.program, model=self.model,
                logits_chunk=self.config.train.logits_chunk,
            )
        elif score_ref:  # dispatched, not awaited: the device scores while the host verifies below
            with self.compile_log.program("reference", rollout.tokens.shape, "reference_logprobs"):
                ref_logp = self.step_fns.ref_logprobs(
                    self.ref_params, rollout, model=self.model, logits_chunk=self.config.train.logits_chunk,
                    tokens_per_micro_batch=self.config.train.tokens_per_micro_batch, row_shards=self._row_shards(),
                )
        # Verified even when the reward does not use it (sharpening runs): host-side and cheap, it is
        # their real training accuracy (`reward/task`; the main job's figures_accuracy.png).
        last = parts[-1] if len(parts) > 1 else rollout
        scores = early + [self._verify(last, answers[(len(parts) - 1) * chunk * k:])]
        task_reward = self._put_rows(np.concatenate(scores).astype(np.float32))
        t_verify = time.perf_counter()
        if grouped_ref is not None:  # waits for the scoring (counted in update_s, as the rewards' wait is)
            ref_logp = self._put_rows(assemble_rows(grouped_ref, rollout.tokens.shape))
        with self.compile_log.program("rewards", rollout.tokens.shape, "compute_rewards"):
            scored = self.step_fns.rewards(
                None, rollout, task_reward, model=self.model, reward=self.config.reward, loss=self.config.loss,
                group_size=k, logits_chunk=self.config.train.logits_chunk, score_reference=score_ref,
                tokens_per_micro_batch=self.config.train.tokens_per_micro_batch, row_shards=self._row_shards(),
                ref_logp_BT=ref_logp,
            )
        if self.step_fns.grouped is not None:  # config.train.group_by_length
            self.state, step_metrics = length_grouped_update(
                self.step_fns.grouped, self.state, jax.tree.map(to_host, scored.batch), lengths,
                micro_batches=self.config.train.micro_batches, prompt_len=tokens.shape[1],
                width_step=width_step(self.config), put_rows=self._put_rows, program=self.compile_log.program,
            )
        else:
            with self.compile_log.program("train_step", scored.batch.tokens.shape, "train_step"):
                self.state, step_metrics = self.step_fns.train_step(self.state, scored.batch)
        jax.block_until_ready(self.state.params)
        t_end = time.perf_counter()

        rewards = to_host(scored.rewards)
        # One transfer for every scalar (float() on each would sync once per metric).
        metrics = {k_: float(v) for k_, v in jax.device_get({**scored.metrics, **step_metrics}).items()}
        num_response_tokens = float(lengths.sum())
        metrics |= {
            "response_length": float(lengths.mean()),
            "finished_fraction": float(to_host(rollout.finished).mean()),
            "prompt_length": float(np.asarray(mask).sum(-1).mean()),
            "rollout_s": t_rollout - t0,
            "verify_s": t_verify - t_rollout,
            **({"verify_overlapped_s": t_early} if len(parts) > 1 else {}),  # inside rollout_s, beside the decode
            "update_s": t_end - t_verify,
            "step_s": t_end - t0,
            "tokens_per_s": num_response_tokens / (t_end - t0),
            "rollout_tokens_per_s": num_response_tokens / (t_rollout - t0),
        }
        if self.step_fns.score_ref and not score_ref:  # kl_every's other steps: these were computed against zeros
            for key in ("kl", "kl_sequence", "reward/ref_logp_sum"):
                metrics.pop(key, None)
        if score_ref:
            # Sequence-level KL(pi || base) estimate: E_pi[log pi(y) - log base(y)], y ~ pi, both at
            # T = 1 (the only training temperature, `RunConfig.validate`).
            metrics["kl_to_base"] = metrics["reward/pol_logp_sum"] - metrics["reward/ref_logp_sum"]
        if metrics.get("update_skipped", 0.0) > 0:
            log.warning("step %d: non-finite loss, gradient or update; update skipped (params unchanged)", step)
        return {"scalars": metrics, "histograms": {"rewards": rewards, "response_lengths": lengths}}

    def _verify(self, rollout, answers: list[str]) -> np.ndarray:
        """The task reward of a sampler call's rows (host; waits for that call only)."""
        return np.asarray(self.task.score(decode_responses(self.tokenizer, rollout), answers), np.float32)

    # ---- validation ---------------------------------------------------------------
    def validate(self, step: int) -> dict[str, float]:
        with on_mesh(self.mesh):
            return self._validate(step)

    def _validate(self, step: int) -> dict[str, float]:
        from sharpjax.eval.harness import evaluate

        params = cast_params(self.state.params, self.model.jnp_dtype)
        out: dict[str, float] = {}
        # Per-batch sizes and per-row budgets come from the harness (`rollout.text.generate_text`).
        sampling = _sampling(self.config, self.model, self.tokenizer, eval=True)
        for i, (name, problems) in enumerate(self.task.validation.items()):
            result = evaluate(
                params, self.model, self.tokenizer, problems,
                num_samples=self.config.eval.num_samples, sampling=sampling,
                key=_step_key(self.base_key, step, 1 + i), batch_size=self.config.eval.batch_size,
                render_fn=self.task.render, verify_fn=self.task.verify, progress=False, desc=name,
                buckets=self.config.rollout.prompt_buckets,
            )
            out |= {f"val/{name}/{k}": float(v) for k, v in result.summary.items() if _is_number(v)}
        return out

    # ---- the loop -----------------------------------------------------------------
    def run(self, *, stop_after: int | None = None) -> TrainResult:
        """Trains to `config.train.steps` (or stops after step `stop_after`, checkpointed).

        The workdir lock is released when it returns or raises: a trainer runs once.
        """
        try:
            return self._run(stop_after)
        finally:
            self.close()

    def _run(self, stop_after: int | None) -> TrainResult:
        cfg = self.config.train
        validation: dict[int, dict[str, float]] = {}
        every = self.config.eval.every
        interrupted = diverged = False
        skipped_in_a_row = 0
        step = self.start_step
        with _StopFlag() as stop:  # from the first record on: a signal after it is never lost work
            if step == 0 and self.task.validation and self.config.eval.at_start:
                validation[0] = self.validate(0)
                self.logger.log(0, validation[0])
                self._print(0, validation[0], keys=tuple(validation[0]))
            while step < cfg.steps:
                out = self.rollout_and_update(step)
                step += 1
                self.logger.log(step, out["scalars"], histograms=out["histograms"])
                skipped_in_a_row = skipped_in_a_row + 1 if out["scalars"].get("update_skipped", 0.0) > 0 else 0
                if skipped_in_a_row >= cfg.max_skipped_updates:
                    # No checkpoint of this step: the newest one predates the streak (params did not
                    # move since, but a rerun must not count this step as done).
                    diverged = True
                    break
                if step % cfg.log_every == 0 or step == cfg.steps:
                    self._print(step, out["scalars"])
                val = None
                if self.task.validation and ((every and step % every == 0) or step == cfg.steps):
                    val = validation[step] = self.validate(step)
                    self.logger.log(step, val)
                    self._print(step, val, keys=tuple(val))
                done = step == cfg.steps or stop.signum is not None or step == stop_after
                if val is not None or done or step % cfg.checkpoint_every == 0:
                    self._save(step, val)
                if stop.signum is not None or step == stop_after:
                    interrupted = step < cfg.steps
                    break
        self.checkpointer.wait()
        exports = {}
        if cfg.export_final and not interrupted:
            # After a divergence "last" is the newest checkpoint (taken before the skipped updates).
            exports = self.export(from_checkpoint=diverged)
        self.logger.close()
        if diverged:
            latest = self.checkpointer.latest_step()
            raise TrainingDiverged(
                f"step {step}: {skipped_in_a_row} updates in a row were skipped as non-finite (loss, gradient, update "
                f"or params; update_skipped in {self.workdir}/metrics.jsonl), run stopped. "
                + (f"The last checkpoint (step {latest}) is exported to {exports.get('last')}. " if exports else "")
                + "Lower config.optim.learning_rate (or raise config.train.max_skipped_updates) "
                "and use a new --workdir."
            )
        return TrainResult(
            workdir=self.workdir, last_step=step, best_step=self.checkpointer.best_step(),
            validation=validation, export_dirs=exports, interrupted=interrupted,
        )

    def export(self, *, from_checkpoint: bool = False) -> dict[str, str]:
        """Writes the last (and the best, when validated) policy as HF directories.

        from_checkpoint: "last" is the newest checkpoint's policy rather than the current one
        (none is written when there is no checkpoint).
        """
        exports = {}
        last = self.state.params
        if from_checkpoint:
            latest = self.checkpointer.latest_step()
            last = None if latest is None else self.checkpointer.restore(
                latest, abstract_state=abstract_like(self._checkpoint_tree()))[0]["train"].params
        if last is not None:
            exports["last"] = os.path.join(self.workdir, "export", "last")
            self._export_params(last, exports["last"])
        best = self.checkpointer.best_step()
        if best is not None:
            tree, _ = self.checkpointer.restore(best, abstract_state=abstract_like(self._checkpoint_tree()))
            exports["best"] = os.path.join(self.workdir, "export", "best")
            self._export_params(tree["train"].params, exports["best"])
        return exports

    def _export_params(self, params, path: str) -> None:
        # Every process gathers: with the weights sharded over processes (FSDP across hosts)
        # `to_host` is a collective, and process 0 alone would wait for the others forever.
        host = jax.tree.map(to_host, cast_params(params, self.model.jnp_dtype))
        if jax.process_index() == 0:
            save_model(path, host, self.model)
            self.tokenizer.save_pretrained(path)

    def _print(self, step: int, metrics: dict, keys: Sequence[str] = PROGRESS_KEYS) -> None:
        if self.progress and jax.process_index() == 0:
            print(format_metrics(step, metrics, keys=keys), flush=True)


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)


def train(
    config: RunConfig, workdir: str, *, config_dict: dict | None = None, stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Runs (or resumes, if `workdir` has checkpoints) one training run.

    Raises:
      WorkdirLockedError: another live process trains in `workdir`.
      TrainingDiverged: `config.train.max_skipped_updates` non-finite updates in a row.
    """
    trainer = Trainer(config, workdir, config_dict=config_dict, progress=progress)
    try:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(trainer.config_dict, f, indent=2, default=str)
        return trainer.run(stop_after=stop_after)
    finally:
        trainer.close()

