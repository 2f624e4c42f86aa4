"""The arithmetic base model as a cached Hugging Face directory, and its accuracy.

    train_base_model(out_dir, config) -> an HF model directory (trained once, cached by config)
    shipped_model_dir("default")      -> the calibrated model shipped in sharpjax/assets/base_default
    resolve_model_dir("sft:default")  -> the directory of a config's symbolic `model_dir`: the shipped
                                         model (every machine starts RL from the same weights), or with
                                         retrain=True one trained here (cached)
    measure_accuracy(...)             -> mean@1 at temperature T and greedy accuracy

Accuracy goes through the one evaluation harness (`sharpjax.eval.harness.evaluate`) with the
arithmetic task's renderer and verifier, exactly as validation and the main job measure it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sharpjax.errors import ConfigError, ModelFileError
from sharpjax.models.config import ModelConfig
from sharpjax.models.hf import read_json_object, save_model
from sharpjax.models.transformer import Params
from sharpjax.sft.config import SFTConfig
from sharpjax.sft.train import split_problems, train
from sharpjax.tasks import arithmetic
from sharpjax.tasks.arithmetic import ArithmeticProblem

__all__ = [
    "INFO_FILE",
    "Accuracy",
    "cache_dir",
    "check_model_dir",
    "load_sft_info",
    "measure_accuracy",
    "resolve_model_dir",
    "resolve_model_dirs",
    "shipped_model_dir",
    "train_base_model",
]

log = logging.getLogger(__name__)

INFO_FILE = "sft_info.json"
# Bump when training changes in a way that invalidates cached models trained by older code.
FORMAT_VERSION = 3  # 2: training on the task's train split, eval on its test split; 3: shortcut solutions


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Accuracy of a model on a problem set.

    Attributes:
      mean_at_1: fraction of correct samples at `temperature` (mean over problems and samples).
      greedy: fraction of problems the greedy (argmax) response solves.
      per_problem: per problem, the fraction of its `num_samples` samples that are correct.
      num_problems, num_samples, temperature: how it was measured.
      shortcut_rate: on the trap problems, the fraction of samples that stop early (`arithmetic.stopped_early`:
        the shortcut; on the other problems the two styles can be the same text).
      trap_mean_at_1: mean@1 on the problems the shortcut gets wrong (`arithmetic.is_trap`).
      trap_majority_wrong: 1 - maj@num_samples on the trap problems: how often their most
        frequent sampled answer is wrong (ties split, `sharpjax.sample_metrics.maj_at_k`).
    """

    mean_at_1: float
    greedy: float
    per_problem: tuple[float, ...]
    num_problems: int
    num_samples: int
    temperature: float
    shortcut_rate: float = float("nan")
    trap_mean_at_1: float = float("nan")
    trap_majority_wrong: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["per_problem"] = list(self.per_problem)
        # Problems RL can learn from with RLOO: neither always nor never solved.
        d["fraction_mixed"] = float(np.mean([0 < p < 1 for p in self.per_problem])) if self.per_problem else 0.0
        return d


def measure_accuracy(
    params: Params,
    model_config: ModelConfig,
    tokenizer,
    problems: Sequence[ArithmeticProblem],
    *,
    key: jax.Array,
    temperature: float = 1.0,
    num_samples: int = 4,
    max_new_tokens: int = 48,
    batch_size: int = 128,
) -> Accuracy:
    """mean@1 at `temperature` (over `num_samples` samples per problem) and greedy accuracy.

    Prompts are rendered exactly as in training (`sharpjax.tasks.arithmetic.render`) and
    responses scored with the task's verifier, through `sharpjax.eval.harness.evaluate`.

    Args:
      params, model_config, tokenizer: the model.
      problems: the problems (non-empty).
      key: PRNG key for sampling.
      temperature: sampling temperature for mean@1 (the paper samples at 1.0).
      num_samples: samples per problem.
      max_new_tokens: response budget; a response cut off without a box scores 0.
      batch_size: prompts per sampler call.
    """
    from sharpjax.eval.harness import evaluate
    from sharpjax.rollout.sampler import sampling_config_for

    if not problems:
        raise ValueError("measure_accuracy needs at least one problem.")
    sampled = sampling_config_for(
        model_config, tokenizer, max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature
    )
    greedy = dataclasses.replace(sampled, num_samples=1, greedy=True)
    runs = {}
    for name, sampling in (("sampled", sampled), ("greedy", greedy)):
        runs[name] = evaluate(
            params, model_config, tokenizer, problems, sampling=sampling, key=key, batch_size=batch_size,
            render_fn=lambda text: arithmetic.render(tokenizer, text), verify_fn=arithmetic.verify, ks=(1,),
            keep_responses=name == "sampled", progress=False,
        ).records
    per_problem = [float(np.mean(r.correct)) for r in runs["sampled"]]
    trap = arithmetic.trap_summary(problems, runs["sampled"], (1, num_samples))
    nan = float("nan")
    return Accuracy(
        shortcut_rate=trap.get("shortcut_rate", nan),
        trap_mean_at_1=trap.get("trap_pass@1", nan),
        trap_majority_wrong=1.0 - trap.get(f"trap_maj@{num_samples}", nan),
        mean_at_1=float(np.mean(per_problem)),
        greedy=float(np.mean([r.correct[0] for r in runs["greedy"]])),
        per_problem=tuple(per_problem),
        num_problems=len(problems),
        num_samples=num_samples,
        temperature=temperature,
    )


def load_sft_info(model_dir: str) -> dict[str, Any] | None:
    """The sft_info.json of a model directory, or None when there is none.

    Raises ModelFileError naming the file when it is there but truncated or corrupt.
    """
    path = os.path.join(model_dir, INFO_FILE)
    return read_json_object(path, INFO_FILE) if os.path.exists(path) else None


def _is_cached(out_dir: str, config: SFTConfig) -> bool:
    try:
        info = load_sft_info(out_dir)
    except ModelFileError as e:  # a cache directory: a damaged one is trained again, not an error
        log.warning("SFT: %s; training the base model again", e)
        return False
    if info is None or info.get("format_version") != FORMAT_VERSION or info.get("config") != config.to_dict():
        return False
    return all(os.path.exists(os.path.join(out_dir, f)) for f in ("config.json", "model.safetensors", "tokenizer.json"))


def train_base_model(out_dir: str, config: SFTConfig | None = None, *, force: bool = False) -> str:
    """Trains (or reuses) the arithmetic base model and saves it as a Hugging Face directory.

    The directory holds config.json + model.safetensors (`sharpjax.models.hf.save_model`),
    the tokenizer files, and sft_info.json (config, accuracy on held-out problems, timings,
    loss curve). sft_info.json is written last, atomically: a directory whose sft_info.json
    records the same config (and code format version) is complete and is returned without
    training.

    Args:
      out_dir: the model directory (created if needed).
      config: the run (default: `SFTConfig()`, the main job's base model).
      force: retrain even when a matching model exists.

    Returns:
      out_dir.
    """
    config = SFTConfig() if config is None else config
    if not force and _is_cached(out_dir, config):
        log.info("SFT: reusing the base model in %s (same config)", out_dir)
        return out_dir
    os.makedirs(out_dir, exist_ok=True)
    info_path = os.path.join(out_dir, INFO_FILE)
    if os.path.exists(info_path):
        os.remove(info_path)  # the directory is stale until the new info is written
    params, model_config, tokenizer, history = train(config)
    save_model(out_dir, params, model_config)
    tokenizer.save_pretrained(out_dir)

    start = time.perf_counter()
    _, eval_problems = split_problems(config)
    accuracy = None
    if eval_problems:
        accuracy = measure_accuracy(
            params,
            model_config,
            tokenizer,
            eval_problems,
            key=jax.random.key(config.eval.eval_seed),
            num_samples=config.eval.eval_samples,
            max_new_tokens=config.eval.max_new_tokens,
        )
        log.info(
            "SFT: held-out accuracy on %d problems: mean@1 (T=1) %.3f, greedy %.3f; trap problems: stopped "
            "early in %.2f of samples, mean@1 %.3f, majority answer wrong on %.2f",
            len(eval_problems),
            accuracy.mean_at_1,
            accuracy.greedy,
            accuracy.shortcut_rate,
            accuracy.trap_mean_at_1,
            accuracy.trap_majority_wrong,
        )
    eval_seconds = time.perf_counter() - start
    k = max(1, len(history.loss) // 200)  # a loss curve of at most ~200 points
    info = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "accuracy": None if accuracy is None else accuracy.to_dict(),
        "num_params": model_config.num_params,
        "initial_loss": float(history.loss[0]),
        "final_loss": float(np.mean(history.loss[-max(1, min(50, len(history.loss) // 10)) :])),
        "loss_curve": {"every": k, "loss": [float(x) for x in history.loss[::k]]},
        "compile_seconds": history.compile_seconds,
        "train_seconds": history.train_seconds,
        "eval_seconds": eval_seconds,
        "jax_backend": jax.default_backend(),
    }
    tmp = info_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, info_path)
    return out_dir


def cache_dir() -> str:
    """Where `sft:<size>` models are cached: $SHARPJAX_CACHE_DIR, default ~/.cache/sharpjax."""
    return os.environ.get("SHARPJAX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sharpjax")


def shipped_model_dir(size: str) -> str:
    """The directory of the base model of `size` shipped as package data (sharpjax/assets/base_<size>).

    It is read-only package data: never trained into or written. sharpjax/assets/README.md records
    the recipe and the command that rebuilds it.
    """
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", f"base_{size}")


def _mismatch(info: dict[str, Any] | None, config: SFTConfig) -> str | None:
    """Why a model directory's sft_info.json does not record `config` (None: it does)."""
    if info is None:
        return f"it has no {INFO_FILE}"
    if info.get("format_version") != FORMAT_VERSION:
        return f"it was trained by SFT code of format {info.get('format_version')}, this code is {FORMAT_VERSION}"
    stored, wanted = _dotted(info.get("config") or {}), _dotted(config.to_dict())
    if stored != wanted:
        fields = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        return "its recipe differs in " + ", ".join(
            f"{k} ({stored.get(k)!r} there, {wanted.get(k)!r} now)" for k in fields
        )
    return None


def _dotted(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"steps": 150}} -> {"optim.steps": 150}: a mismatch names the field, not its section."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def resolve_model_dir(model_dir: str, *, retrain: bool = False) -> str:
    """`sft:<size>` -> the base model's directory; a path -> itself.

    `sft:<size>` is the model shipped in sharpjax/assets/base_<size> (the same weights on every
    machine), provided it was trained with `sharpjax.sft.config.sft_config(size)`.
    `retrain=True` (`python -m sharpjax --retrain-base`) trains the recipe on this machine instead,
    into $SHARPJAX_CACHE_DIR/sft_<size> (reused there by later retrains of the same recipe). When the
    recipe no longer matches the shipped model, a model retrained earlier with it is used; without
    one it is a ConfigError naming --retrain-base (stale weights are never used silently).
    """
    if not model_dir.startswith("sft:"):
        if not os.path.isdir(model_dir):
            raise _not_a_model_dir(model_dir, "config.model_dir")
        return model_dir
    from sharpjax.sft.config import sft_config  # at call time: tests replace the recipe

    size = model_dir.split(":", 1)[1]
    config = sft_config(size)  # ConfigError on an unknown size
    cached = os.path.join(cache_dir(), f"sft_{size}")
    if retrain:
        return train_base_model(cached, config)
    shipped = shipped_model_dir(size)
    try:
        why = _mismatch(load_sft_info(shipped), config)
    except ModelFileError:  # damaged package data: a model retrained here still serves, else say which file
        if not _is_cached(cached, config):
            raise
        why = f"its {INFO_FILE} is damaged"
    if why is None:
        return shipped
    if _is_cached(cached, config):
        log.info("SFT: the shipped %s does not match the recipe (%s); using the model retrained in %s", model_dir, why,
                 cached)
        return cached
    raise ConfigError(
        f"the shipped base model {model_dir} ({shipped}) does not match sft_config({size!r}) in "
        f"sharpjax/sft/config.py: {why}. Train it with `python -m sharpjax --retrain-base` "
        f"(or `python experiments/sft_arithmetic.py --preset {size} --out_dir {cached}`)."
    )


def _not_a_model_dir(model_dir: str, field: str) -> ConfigError:
    return ConfigError(
        f"{field}={model_dir!r} is not a directory; give a local Hugging Face model directory "
        "(config.json + *.safetensors + tokenizer files) or 'sft:quick' / 'sft:default'."
    )


def check_model_dir(model_dir: str, field: str = "config.model_dir", *, weights: bool = True) -> None:
    """Raises ConfigError unless `model_dir` is `sft:<known size>` or an existing directory (no training),
    and ModelFileError when that directory's config.json, safetensors, tokenizer files, chat template
    or sft_info.json are corrupt (or missing, for config.json). `weights=False` (a random-weights
    run): config.json and the tokenizer only; weight files are never opened."""
    if model_dir.startswith("sft:"):
        from sharpjax.sft.config import sft_config  # at call time: tests replace the recipe

        sft_config(model_dir.split(":", 1)[1])
    elif not os.path.isdir(model_dir):
        raise _not_a_model_dir(model_dir, field)
    else:
        from sharpjax.models.hf import check_model_files, load_config
        from sharpjax.models.tokenizer import TOKENIZER_FILES, load_tokenizer

        # A corrupt config.json or a corrupt / truncated safetensors file: ModelFileError naming it.
        if weights:
            check_model_files(model_dir, weights_required=False)
        else:
            load_config(model_dir)
        # Likewise a tokenizer file, the chat template or sft_info.json. A directory with no tokenizer
        # at all passes, as one without weights does (a fit check needs config.json only).
        if any(os.path.exists(os.path.join(model_dir, f)) for f in TOKENIZER_FILES):
            load_tokenizer(model_dir)
        load_sft_info(model_dir)


def resolve_model_dirs(config_dict):
    """A copy of the ml-collections config with `model_dir` / `ref_model_dir` resolved."""
    if hasattr(config_dict, "copy_and_resolve_references"):
        config_dict = config_dict.copy_and_resolve_references()
    else:
        config_dict = dict(config_dict)
    if hasattr(config_dict, "unlock"):
        config_dict.unlock()
    config_dict["model_dir"] = resolve_model_dir(config_dict["model_dir"])
    if config_dict.get("ref_model_dir"):
        config_dict["ref_model_dir"] = resolve_model_dir(config_dict["ref_model_dir"])
    return config_dict
