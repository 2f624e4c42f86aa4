"""Math problem sets: the paper's training and evaluation data as `Problem` records.

Local benchmark files (JSONL, one problem per line, fields described in the data directory's
README.md) are read from a data directory: the `data_dir` argument, else the environment
variable `SHARPJAX_DATA_DIR`. The project never ships the files itself.

    name          file                 problems  solutions  paper's use
    math500       math500.jsonl             500  yes        eval (3B models)
    minerva_math  minerva_math.jsonl        272  yes        eval (3B models)
    aime24        aime24.jsonl               30  yes        validation / eval (4B model)
    aime25        aime25.jsonl               30  no         eval (4B model)
    hmmt_feb25    hmmt_feb25.jsonl           30  no         eval (4B model)
    math_train    math_train.jsonl         7498  no         training (3B models)
    gsm8k_train   gsm8k_train.jsonl        7473  yes        (not in the paper; small demos)
    gsm8k_test    gsm8k_test.jsonl         1319  yes        (not in the paper; small demos)

`deepscaler` (DeepScaleR-Preview, ~40k problems, the 4B model's training set) is not in the
data directory: pass `path=` to a local JSON/JSONL copy, or have the `datasets` library
installed and be online to read the Hub id `agentica-org/DeepScaleR-Preview-Dataset`.
`hub:<dataset id>` reads any Hub dataset with problem/answer columns the same way.

This module imports neither jax nor `datasets` (the latter only when a Hub name is asked).
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DATA_DIR_ENV",
    "DEEPSCALER_HUB_ID",
    "Problem",
    "available_datasets",
    "load_dataset",
    "resolve_data_dir",
]

DATA_DIR_ENV = "SHARPJAX_DATA_DIR"
DEEPSCALER_HUB_ID = "agentica-org/DeepScaleR-Preview-Dataset"
_HUB_PREFIX = "hub:"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One math problem with its reference answer.

    Attributes:
      id: Unique within its dataset (e.g. "test/precalculus/807.json", "2024_AIME_I-1").
      problem: The problem statement (LaTeX in `$...$`), inserted into the prompt as is.
      answer: The bare reference final answer (not boxed), what the verifier compares with.
      solution: A worked reference solution, or None where the source has none.
      source: Where the problem comes from (the file's `source` field, else the dataset name).
      level: Difficulty 1..5 for MATH problems ("Level 3" is stored as 3); None otherwise or
        when unknown ("Level ?").
      subject: MATH subject or Minerva course name; None when absent.
    """

    id: str
    problem: str
    answer: str
    solution: str | None
    source: str
    level: int | None = None
    subject: str | None = None


@dataclasses.dataclass(frozen=True)
class _LocalSpec:
    filename: str
    description: str


_LOCAL: dict[str, _LocalSpec] = {
    "math500": _LocalSpec("math500.jsonl", "MATH-500 (prm800k test split), 500, with solutions"),
    "minerva_math": _LocalSpec("minerva_math.jsonl", "Minerva-Math (OCW), 272, with solutions"),
    "aime24": _LocalSpec("aime24.jsonl", "AIME 2024 I+II, 30, with solutions"),
    "aime25": _LocalSpec("aime25.jsonl", "AIME 2025 I+II, 30, no solutions"),
    "hmmt_feb25": _LocalSpec("hmmt_feb25.jsonl", "HMMT February 2025, 30, no solutions"),
    "math_train": _LocalSpec("math_train.jsonl", "Hendrycks MATH train, 7498, no solutions"),
    "gsm8k_train": _LocalSpec("gsm8k_train.jsonl", "GSM8K train, 7473, with solutions"),
    "gsm8k_test": _LocalSpec("gsm8k_test.jsonl", "GSM8K test, 1319, with solutions"),
}
_REMOTE = {
    "deepscaler": f"DeepScaleR-Preview (~40k): path= a local JSON/JSONL, or Hub {DEEPSCALER_HUB_ID}"
}


def available_datasets() -> dict[str, str]:
    """Known dataset names and a one-line description of each (plus `hub:<dataset id>`)."""
    return {**{k: v.description for k, v in _LOCAL.items()}, **_REMOTE}


def _known_names() -> str:
    return ", ".join([*_LOCAL, *_REMOTE, "hub:<dataset id>"])


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark data directory: `data_dir`, else `$SHARPJAX_DATA_DIR`.

    Raises:
      FileNotFoundError: Neither is set, or the directory does not exist; the message says
        how to point at the data.
    """
    if data_dir is None:
        env = os.environ.get(DATA_DIR_ENV)
        if not env:
            raise FileNotFoundError(
                f"no data directory: set the environment variable {DATA_DIR_ENV} to the "
                "directory holding the benchmark JSONL files (e.g. ../shared/data) or pass "
                "data_dir=... (or path=... to read one file)."
            )
        data_dir, origin = env, f"${DATA_DIR_ENV}"
    else:
        origin = "data_dir"
    p = Path(data_dir).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"data directory {str(p)!r} (from {origin}) does not exist or is not a directory; "
            f"set {DATA_DIR_ENV} or pass data_dir= to the directory holding the JSONL files."
        )
    return p


# ------------------------------------------------------------------------- row parsing

_LEVEL_RE = re.compile(r"^\s*(?:level\s*)?(\d+)\s*$", re.IGNORECASE)


def _parse_level(v: Any) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    m = _LEVEL_RE.match(str(v))
    return int(m.group(1)) if m else None  # "Level ?" -> None


def gsm8k_final_answer(solution: str) -> str | None:
    """The text after the last `####` of a GSM8K solution, stripped, thousands commas removed."""
    if "####" not in solution:
        return None
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def _first_str(row: Mapping[str, Any], keys: Iterable[str]) -> tuple[str | None, str | None]:
    for k in keys:
        v = row.get(k)
        if v is not None:
            return k, v if isinstance(v, str) else None
    return None, None


def _row_to_problem(row: Any, *, where: str, default_id: str, default_source: str) -> Problem:
    """One JSON object as a Problem. `where` ("file:line") prefixes every error.

    Field names: `problem` (or `question`), `answer` (or, for raw GSM8K rows, the text after
    `####` of `answer` / `solution`; or `final_answer`), optional `id` (or `unique_id`),
    `solution`, `source`, `level`, `subject` (or `type`).
    """
    if not isinstance(row, dict):
        # A data error, not a caller bug: ValueError like every other malformed line.
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}.")  # noqa: TRY004
    pkey, problem = _first_str(row, ("problem", "question"))
    if pkey is None:
        raise ValueError(
            f"{where}: missing required field 'problem' (or 'question'); fields present: "
            f"{sorted(row)}."
        )
    if problem is None or not problem.strip():
        raise ValueError(f"{where}: field {pkey!r} must be a non-empty string, got {row[pkey]!r}.")
    solution = row.get("solution")
    answer = row.get("answer", row.get("final_answer"))
    if (
        pkey == "question"
        and "solution" not in row
        and isinstance(answer, str)
        and "####" in answer
    ):
        # Raw GSM8K row: `answer` is the worked solution ending in "#### N".
        solution, answer = answer, gsm8k_final_answer(answer)
    elif answer is None and isinstance(solution, str) and "####" in solution:
        answer = gsm8k_final_answer(solution)
    if answer is None and "answer" not in row and "final_answer" not in row:
        raise ValueError(
            f"{where}: missing required field 'answer'; fields present: {sorted(row)}."
        )
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"{where}: field 'answer' must be a non-empty string, got {answer!r}.")
    if solution is not None and not isinstance(solution, str):
        raise ValueError(
            f"{where}: field 'solution' must be a string, got {type(solution).__name__}."
        )
    pid = row.get("id", row.get("unique_id", default_id))
    subject = row.get("subject", row.get("type"))
    return Problem(
        id=str(pid),
        problem=problem,
        answer=answer.strip(),
        solution=solution,
        source=str(row.get("source") or default_source),
        level=_parse_level(row.get("level")),
        subject=None if subject is None else str(subject),
    )


def _check_unique(problems: list[Problem], origin: str) -> None:
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):
        if p.id in seen:
            raise ValueError(
                f"{origin}: id {p.id!r} appears twice (items {seen[p.id]} and {i}); ids must be "
                "unique within a dataset."
            )
        seen[p.id] = i


def _read_file(path: Path, *, name: str, limit: int | None) -> list[Problem]:
    """Problems from a JSONL file (one object per line; blank lines skipped) or a JSON array."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(path)!r} does not exist; set {DATA_DIR_ENV} or pass data_dir= to the "
            "directory holding the benchmark files (or path= to the file itself)."
        )
    problems: list[Problem] = []
    data = path.read_bytes()
    # A UTF-8 byte order mark (Windows editors write one) is valid UTF-8 text, not part of line 1.
    data = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the file as UTF-8."
        ) from None
    if text.lstrip()[:1] == "[":  # A JSON array (the DeepScaleR release is one).
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
        for i, row in enumerate(rows):
            if limit is not None and len(problems) >= limit:
                break
            problems.append(
                _row_to_problem(
                    row, where=f"{path}[{i}]", default_id=f"{name}-{i}", default_source=name
                )
            )
    else:
        # split("\n"), not splitlines(): a JSON string may hold U+2028, which splitlines() splits on.
        for lineno, line in enumerate(text.split("\n"), start=1):
            if limit is not None and len(problems) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}).") from None
            problems.append(
                _row_to_problem(
                    row,
                    where=f"{path}:{lineno}",
                    default_id=f"{name}-{len(problems)}",
                    default_source=name,
                )
            )
    if not problems and limit != 0:
        raise ValueError(f"{path} holds no problems.")
    _check_unique(problems, str(path))
    return problems


def _read_hub(hub_id: str, *, name: str, split: str, limit: int | None) -> list[Problem]:
    try:
        import datasets  # Optional: never a sharpjax dependency.
    except ImportError:
        raise ImportError(
            f"dataset {name!r} reads the Hugging Face Hub dataset {hub_id!r}, which needs the "
            "`datasets` library (`pip install datasets`) and network access. Offline, download "
            "it elsewhere and pass path= to its JSON/JSONL file."
        ) from None
    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # Offline, unknown id, unknown split: say what to do.
        raise RuntimeError(
            f"could not load the Hub dataset {hub_id!r} (split {split!r}): "
            f"{type(e).__name__}: {e}. If this machine is offline, pass path= to a local "
            "JSON/JSONL copy instead."
        ) from e
    problems = []
    for i, row in enumerate(ds):
        if limit is not None and i >= limit:
            break
        problems.append(
            _row_to_problem(
                dict(row), where=f"{hub_id}[{i}]", default_id=f"{name}-{i}", default_source=hub_id
            )
        )
    _check_unique(problems, hub_id)
    return problems


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    limit: int | None = None,
    split: str = "train",
) -> list[Problem]:
    """Load a problem set by name (see `available_datasets`).

    Args:
      name: A local benchmark name (math500, minerva_math, aime24, aime25, hmmt_feb25,
        math_train, gsm8k_train, gsm8k_test), "deepscaler", or "hub:<dataset id>".
      data_dir: Directory holding the local JSONL files; default `$SHARPJAX_DATA_DIR`.
      path: Read this JSON/JSONL file instead (any name; required for deepscaler offline).
      limit: Keep only the first `limit` problems, in file order (>= 0).
      split: Split of a Hub dataset (deepscaler / hub: names only).

    Returns:
      The problems in file order.

    Raises:
      ValueError: Unknown name (the message lists the known ones), malformed line
        ("file:line: ..." naming the missing field), duplicate id, bad limit.
      FileNotFoundError: No data directory / missing file (says to set SHARPJAX_DATA_DIR).
      ImportError / RuntimeError: A Hub dataset without `datasets` installed or offline.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"unknown dataset {name!r}; known: {_known_names()} (or pass path= to a file).")
    if path is not None:  # Any name: it only labels the problems (default ids and source).
        return _read_file(Path(path).expanduser(), name=name, limit=limit)
    if not (name in _LOCAL or name in _REMOTE or (name.startswith(_HUB_PREFIX) and len(name) > 4)):
        raise ValueError(f"unknown dataset {name!r}; known: {_known_names()} (or pass path= to a file).")
    if name in _LOCAL:
        return _read_file(
            resolve_data_dir(data_dir) / _LOCAL[name].filename, name=name, limit=limit
        )
    hub_id = DEEPSCALER_HUB_ID if name == "deepscaler" else name[len(_HUB_PREFIX) :]
    return _read_hub(hub_id, name=name, split=split, limit=limit)
