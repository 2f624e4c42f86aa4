"""The training loop: prompts -> rollout -> reward -> train step -> validation -> checkpoint.

One process per host runs `train(config, workdir)`. Everything inside a step that can be
jitted is (the sampler, the reward/advantage computation, the sharded update); the
verifier runs on the host between them because math-verify is Python/sympy.

Randomness: the key of step s is `fold_in(key(seed), s)` and the data order is the prompt
iterator's seeded permutation, both stored in the checkpoint, so a run killed after step N
and resumed reproduces the uninterrupted run bit for bit (tests/train/test_loop.py).
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
from jax.sharding import NamedSharding, PartitionSpec

from sharpjax.models.hf import load_model, save_model
from sharpjax.models.sharding import BATCH_AXES, make_mesh, param_shardings, put_global, shard_params, to_host
from sharpjax.models.tokenizer import bucket_length, load_tokenizer
from sharpjax.rollout.sampler import SamplingConfig, sample, trim_padding
from sharpjax.rollout.text import decode_responses, encode_prompts
from sharpjax.train.checkpoint import Checkpointer, abstract_like
from sharpjax.train.config import ConfigError, RunConfig
from sharpjax.train.metrics_log import MetricsLogger, format_metrics
from sharpjax.train.step import (
    StepConfig,
    cast_params,
    compute_rewards,
    init_train_state,
    make_optimizer,
    make_train_step,
)
from sharpjax.train.tasks import Task, build_task

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
    """Set by SIGTERM so the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers: main thread only
            for sig in (signal.SIGTERM,):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        log.warning("received signal %d: checkpointing and stopping after this step", signum)
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize()` when the usual coordinator variables are set.

    Reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID (explicit), and lets
    JAX auto-detect SLURM / Open MPI / cloud TPU environments when only
    SHARPJAX_DISTRIBUTED=1 is set. Returns whether it initialized.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        try:
            num_processes = int(os.environ["JAX_NUM_PROCESSES"])
            process_id = int(os.environ["JAX_PROCESS_ID"])
        except KeyError as e:
            raise ConfigError(
                f"JAX_COORDINATOR_ADDRESS is set but {e.args[0]} is not; set JAX_NUM_PROCESSES and JAX_PROCESS_ID."
            ) from None
        jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)
        return True
    if os.environ.get("SHARPJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


def _step_key(base_key: jax.Array, step: int, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(base_key, step), stream)


def _sampling(config: RunConfig, model_config, tokenizer, prompt_len: int, *, eval: bool = False) -> SamplingConfig:
    r = config.rollout
    budget = r.max_new_tokens if r.max_new_tokens is not None else r.max_total_length - prompt_len
    if eval and config.eval.max_new_tokens is not None:
        budget = config.eval.max_new_tokens
    if budget < 1:
        raise ConfigError(
            f"prompts of {prompt_len} tokens leave no room for a response within "
            f"config.rollout.max_total_length={r.max_total_length}; raise it or shorten the prompts."
        )
    stop = tuple(model_config.eos_token_ids) or ((tokenizer.eos_token_id,) if tokenizer.eos_token_id is not None else ())
    return SamplingConfig(
        max_new_tokens=int(budget),
        num_samples=1 if eval else r.samples_per_prompt,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        ignore_eos=r.ignore_eos,
        stop_token_ids=stop,
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
    )


# Settings a resumed run may change: extending a run is a resume with more steps.
RESUMABLE_CHANGES = frozenset({"train.steps", "optim.total_steps", "train.tokens_per_micro_batch"})


def _changed_settings(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, current value) for every setting that differs, JSON-normalized."""
    def flat(tree, prefix=""):
        out = {}
        for k, v in tree.items():
            if isinstance(v, dict):
                out |= flat(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
        return out

    saved, current = (flat(json.loads(json.dumps(d, default=str))) for d in (saved, current))
    return [(k, saved.get(k), current.get(k)) for k in sorted(saved.keys() | current.keys())
            if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)]


class Trainer:
    """Holds the models, mesh, jitted functions and logs of one run; `run()` trains."""

    def __init__(self, config: RunConfig, workdir: str, *, config_dict: dict | None = None, progress: bool = True):
        self.config = config
        self.workdir = workdir
        self.progress = progress
        self.tokenizer = load_tokenizer(config.model_dir)
        params, self.model = load_model(config.model_dir, dtype=config.dtype)
        config.check_against(context_length=self.model.max_position_embeddings, num_devices=jax.device_count())
        self.task: Task = build_task(config, self.tokenizer)
        os.makedirs(workdir, exist_ok=True)

        data, fsdp, tensor = config.mesh_shape(jax.device_count())
        self.mesh = make_mesh(data, fsdp, tensor) if jax.device_count() > 1 else None
        shardings = param_shardings(self.model, self.mesh) if self.mesh is not None else None
        if shardings is not None:
            params = shard_params(params, shardings)
        ref_dir = config.ref_model_dir or config.model_dir
        if ref_dir == config.model_dir:
            ref = params
        else:
            ref, _ = load_model(ref_dir, dtype=config.dtype, shardings=shardings)
        # The reference is frozen in the compute dtype; the policy gets its own fp32 copy.
        self.ref_params = cast_params(ref, self.model.jnp_dtype)
        self.score_ref = (
            config.reward.needs_ref_logprobs or config.loss.kl_coef > 0 or config.train.score_reference_always
        )
        self.step_config = StepConfig(
            model=self.model,
            loss=config.loss,
            optim=config.optim,
            micro_batches=config.train.micro_batches,
            remat=config.train.remat,
            logits_chunk=config.train.logits_chunk,
            has_reference=self.score_ref,
        )
        self.optimizer = make_optimizer(config.optim)
        self.state = init_train_state(params, self.optimizer, self.mesh)
        del params, ref
        self.base_key = jax.random.key(config.train.seed)
        if self.mesh is not None:  # a global array, so every process checkpoints the same key
            data = put_global(np.asarray(jax.random.key_data(self.base_key)), NamedSharding(self.mesh, PartitionSpec()))
            self.base_key = jax.random.wrap_key_data(data)
        self.iterator = self.task.train_iterator(config.rollout.prompts_per_step, config.train.seed)
        self.config_dict = config_dict if config_dict is not None else config.to_dict()

        self.best_metric = f"val/{config.data.validation[0]}/{config.eval.metric}" if self.task.validation else None
        self.checkpointer = Checkpointer(
            os.path.join(workdir, "checkpoints"), keep_last=config.train.keep_last, best_metric=self.best_metric
        )
        self.start_step = 0
        latest = self.checkpointer.latest_step()
        if latest is not None:
            self._restore(latest)
        self.logger = MetricsLogger(workdir, resume_step=self.start_step if latest is not None else None)
        self._train_step = make_train_step(self.step_config, self.state, self.mesh)
        self._rewards = jax.jit(
            compute_rewards,
            static_argnames=("model", "reward", "loss", "group_size", "logits_chunk", "score_reference",
                             "tokens_per_micro_batch", "row_shards"),
        )

    # ---- checkpoints --------------------------------------------------------------
    def _checkpoint_tree(self) -> dict:
        return {"train": self.state, "key": self.base_key}

    def _restore(self, step: int) -> None:
        # Checked on the small metadata file, before reading (possibly gigabytes of) state.
        changed = _changed_settings(self.checkpointer.restore_meta(step).get("config", {}), self.config_dict)
        if changed:
            raise ConfigError(
                f"{self.checkpointer.directory} holds checkpoints of a run with other settings ("
                + "; ".join(f"{k}: {old!r} there, {new!r} now" for k, old, new in changed[:8])
                + "). Resuming would mix the two runs: use a new --workdir, or delete its checkpoints/ to start over."
            )
        tree, meta = self.checkpointer.restore(step, abstract_state=abstract_like(self._checkpoint_tree()))
        self.state, self.base_key = tree["train"], tree["key"]
        self.iterator.restore(meta["iterator"])
        self.start_step = int(meta["step"])
        log.info("resumed from %s at step %d", self.checkpointer.directory, self.start_step)

    def _save(self, step: int, metrics: dict | None) -> None:
        meta = {"step": step, "iterator": self.iterator.state(), "config": self.config_dict}
        self.checkpointer.save(step, self._checkpoint_tree(), meta=meta, metrics=metrics)

    # ---- one step -----------------------------------------------------------------
    def _row_shards(self) -> int:
        return 1 if self.mesh is None else math.prod(self.mesh.shape[a] for a in BATCH_AXES)

    def _put_rows(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        spec = PartitionSpec(BATCH_AXES, *([None] * (x.ndim - 1)))
        return put_global(x, NamedSharding(self.mesh, spec))

    def rollout_and_update(self, step: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        problems = self.iterator.next()
        prompts = [self.task.render(p.problem) for p in problems]
        tokens, mask = encode_prompts(self.tokenizer, prompts, buckets=self.config.rollout.prompt_buckets)
        sampling = _sampling(self.config, self.model, self.tokenizer, tokens.shape[1])
        policy = cast_params(self.state.params, self.model.jnp_dtype)
        chunk = self.config.rollout.chunk_prompts or len(tokens)
        # One sampler call per chunk of prompts: the KV cache is per call (config.rollout.chunk_prompts).
        parts = [
            sample(
                policy, self._put_rows(tokens[i : i + chunk]), self._put_rows(mask[i : i + chunk]),
                _step_key(self.base_key, step, 0) if i == 0 else _step_key(self.base_key, step, 1000 + i // chunk),
                config=self.model, sampling=sampling,
            )
            for i in range(0, len(tokens), chunk)
        ]
        del policy  # the bf16 copy would otherwise stay alive through the scoring and the update
        if len(parts) > 1:
            parts = [p.replace(prompt_index=p.prompt_index + j * chunk) for j, p in enumerate(parts)]
        rollout = parts[0] if len(parts) == 1 else jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)
        jax.block_until_ready(rollout.tokens)
        lengths = to_host(rollout.lengths)
        if self.config.train.trim_padding:
            rollout = trim_padding(rollout, tokens.shape[1], int(lengths.max()))
        t_rollout = time.perf_counter()

        k = self.config.rollout.samples_per_prompt
        task_reward = None
        if self.config.reward.needs_task_reward:
            texts = decode_responses(self.tokenizer, rollout)
            answers = [p.answer for p in problems for _ in range(k)]
            task_reward = self._put_rows(np.asarray(self.task.score(texts, answers), np.float32))
        t_verify = time.perf_counter()
        scored = self._rewards(
            self.ref_params if self.score_ref else None, rollout, task_reward, model=self.model,
            reward=self.config.reward, loss=self.config.loss, group_size=k,
            logits_chunk=self.config.train.logits_chunk, score_reference=self.score_ref,
            tokens_per_micro_batch=self.config.train.tokens_per_micro_batch, row_shards=self._row_shards(),
        )
        self.state, step_metrics = self._train_step(self.state, scored.batch)
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
            "update_s": t_end - t_verify,
            "step_s": t_end - t0,
            "tokens_per_s": num_response_tokens / (t_end - t0),
            "rollout_tokens_per_s": num_response_tokens / (t_rollout - t0),
        }
        if self.score_ref:
            # Sequence-level KL(pi || base) estimate: E_pi[log pi(y) - log base(y)], y ~ pi.
            metrics["kl_to_base"] = metrics["reward/pol_logp_sum"] - metrics["reward/ref_logp_sum"]
        if metrics.get("update_skipped", 0.0) > 0:
            log.warning("step %d: non-finite loss or gradient; update skipped (params unchanged)", step)
        return {"scalars": metrics, "histograms": {"rewards": rewards, "response_lengths": lengths}}

    # ---- validation ---------------------------------------------------------------
    def validate(self, step: int) -> dict[str, float]:
        from sharpjax.eval.harness import evaluate

        params = cast_params(self.state.params, self.model.jnp_dtype)
        out: dict[str, float] = {}
        for i, (name, problems) in enumerate(self.task.validation.items()):
            prompt_len = max(len(self.tokenizer(self.task.render(p.problem), add_special_tokens=False)["input_ids"]) for p in problems)
            sampling = dataclasses.replace(
                _sampling(self.config, self.model, self.tokenizer, bucket_length(prompt_len, self.config.rollout.prompt_buckets), eval=True),
                num_samples=self.config.eval.num_samples,
            )
            result = evaluate(
                params, self.model, self.tokenizer, problems,
                num_samples=self.config.eval.num_samples, sampling=sampling,
                key=_step_key(self.base_key, step, 1 + i), batch_size=self.config.eval.batch_size,
                render_fn=self.task.render, progress=False, desc=name,
                buckets=self.config.rollout.prompt_buckets,
            )
            out |= {f"val/{name}/{k}": float(v) for k, v in result.summary.items() if _is_number(v)}
        return out

    # ---- the loop -----------------------------------------------------------------
    def run(self, *, stop_after: int | None = None) -> TrainResult:
        """Trains to `config.train.steps` (or stops after step `stop_after`, checkpointed)."""
        cfg = self.config.train
        validation: dict[int, dict[str, float]] = {}
        every = self.config.eval.every
        interrupted = False
        step = self.start_step
        if step == 0 and self.task.validation and self.config.eval.at_start:
            validation[0] = self.validate(0)
            self.logger.log(0, validation[0])
            self._print(0, validation[0], keys=tuple(validation[0]))
        with _StopFlag() as stop:
            while step < cfg.steps:
                out = self.rollout_and_update(step)
                step += 1
                self.logger.log(step, out["scalars"], histograms=out["histograms"])
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
            exports = self.export()
        self.logger.close()
        return TrainResult(
            workdir=self.workdir, last_step=step, best_step=self.checkpointer.best_step(),
            validation=validation, export_dirs=exports, interrupted=interrupted,
        )

    def export(self) -> dict[str, str]:
        """Writes the last (and the best, when validated) policy as HF directories."""
        exports = {"last": os.path.join(self.workdir, "export", "last")}
        self._export_params(self.state.params, exports["last"])
        best = self.checkpointer.best_step()
        if best is not None:
            tree, _ = self.checkpointer.restore(best, abstract_state=abstract_like(self._checkpoint_tree()))
            exports["best"] = os.path.join(self.workdir, "export", "best")
            self._export_params(tree["train"].params, exports["best"])
        return exports

    def _export_params(self, params, path: str) -> None:
        if jax.process_index() == 0:
            save_model(path, jax.tree.map(to_host, cast_params(params, self.model.jnp_dtype)), self.model)
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
    """Runs (or resumes, if `workdir` has checkpoints) one training run."""
    trainer = Trainer(config, workdir, config_dict=config_dict, progress=progress)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(trainer.config_dict, f, indent=2, default=str)
    return trainer.run(stop_after=stop_after)

