"""Math answer extraction and verification (the task reward r(x, y) in {0, 1}).

The reward is math-verify (HuggingFace's sympy-based verifier) applied to the final answer
of a response against a reference answer. This module holds the pure-Python pieces:

* `extract_answer`: the final answer of a response (the last complete `\\boxed{...}` or
  `\\fbox{...}`, nested braces allowed; optional fallbacks to "answer is ..." and to the
  last number).
* `verify_one`: extraction + math-verify comparison of one (response, reference) pair,
  returning a `VerifyResult` (score, reason, extracted answer, canonical form for voting).

Timeouts and parallelism live in `sharpjax.rewards.pool` (`verify_batch`, `verify`):
math-verify's own timeouts use `signal.alarm`, which only works in the main thread and
cannot interrupt a long C-level computation (a huge integer power), so batches run in
worker processes that are killed and replaced when an item overruns its deadline.

This module must not import jax: worker processes import it.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import signal
import threading
from typing import Literal

__all__ = [
    "Fallback",
    "VerifyReason",
    "VerifyResult",
    "extract_answer",
    "extract_boxed",
    "verify_one",
]

# How to find an answer when the response has no complete \boxed{...}:
#   "none":        boxed only (the paper's prompt asks for \boxed{}; default).
#   "answer_is":   then the text after the last "answer is" / "answer:".
#   "last_number": then "answer is", then the last number in the response.
#   "math_verify": no extraction of ours; math-verify's own extraction over the whole
#                  response (boxed first, then any final LaTeX/plain expression). This is
#                  what NeMo-RL's math verifier does, i.e. the paper's reward.
Fallback = Literal["none", "answer_is", "last_number", "math_verify"]
_FALLBACKS = ("none", "answer_is", "last_number", "math_verify")


class VerifyReason(str, enum.Enum):
    """Why a response got its score."""

    CORRECT = "correct"
    NO_ANSWER = "no_answer"  # No extractable final answer.
    MISMATCH = "mismatch"  # Parsed, compared, not equivalent.
    TIMEOUT = "timeout"  # Parsing or comparison exceeded the per-item deadline.
    PARSE_ERROR = "parse_error"  # The answer or the reference could not be parsed.


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    """Verification of one response.

    Attributes:
      score: 1.0 if the answer is equivalent to the reference, else 0.0.
      reason: Why (see `VerifyReason`).
      extracted: The extracted answer string as written in the response (None if none).
      canonical: A normalized form for majority voting: the string form of math-verify's
        first parse of the answer when it parses, else the whitespace/LaTeX-normalized
        extracted string; None when there is no answer. Equal canonical forms mean the same
        answer; equivalent answers written differently (`0.5` vs `1/2`) may still differ.
    """

    score: float
    reason: VerifyReason
    extracted: str | None
    canonical: str | None


# --------------------------------------------------------------------------- extraction

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def _match_braces(text: str, start: int) -> int | None:
    """Index just past the brace group opening at text[start] == '{', or None if unclosed.

    Escaped braces (`\\{`, `\\}`, as in set notation) are skipped, so `\\boxed{\\{1, 2\\}}`
    extracts `\\{1, 2\\}`. A backslash always consumes the next character, so a line
    break followed by a group (`\\\\{2}` in a matrix) still opens a group.
    """
    depth = 0
    i = start
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` in `text`.

    Handles nested braces and the brace-less form `\\boxed 5`. A box left unclosed (a
    response truncated at the length limit) is skipped in favour of the previous complete
    one.

    Args:
      text: A model response or reference solution.

    Returns:
      The stripped box content, or None if there is no complete, non-empty box.
    """
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            end = _match_braces(text, i)
            if end is None:
                continue
            content = text[i + 1 : end - 1].strip()
        elif m.end() < len(text) and text[m.end()] == " ":
            # `\boxed 5`: TeX takes the next token.
            tok = re.match(r"[^\s$]+", text[i:])
            content = tok.group(0).rstrip(".,;") if tok else ""
        else:
            continue
        if content:
            return content
    return None


_ANSWER_IS_RE = re.compile(
    r"(?:final answer|answer)\s*(?:is|:)\s*:?\s*(.+?)(?:\.\s|\.?$|\n)", re.IGNORECASE | re.MULTILINE
)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def extract_answer(response: str, *, fallback: Fallback = "none") -> str | None:
    """The final answer of a response.

    Args:
      response: The model's response text.
      fallback: What to try when there is no complete box (see `Fallback`). With
        "math_verify" this returns the boxed answer if any, else None: math-verify then
        extracts from the whole response itself (see `verify_one`).

    Returns:
      The answer string, or None when nothing is found.
    """
    if fallback not in _FALLBACKS:
        raise ValueError(f"fallback={fallback!r} is not one of {_FALLBACKS}.")
    boxed = extract_boxed(response)
    if boxed is not None or fallback in ("none", "math_verify"):
        return boxed
    matches = _ANSWER_IS_RE.findall(response)
    if matches:
        ans = matches[-1].strip().strip("$").strip()
        if ans:
            return ans
    if fallback == "last_number":
        nums = _NUMBER_RE.findall(response)
        if nums:
            return nums[-1].replace(",", "").replace(" ", "")
    return None


# --------------------------------------------------------------------- normalization

_WRAPPER_RE = re.compile(r"^\\(?:text|textbf|mathbf|mathrm|bf)\s*\{(.*)\}$", re.DOTALL)
_PAREN_NUMBER_RE = re.compile(r"^\(\s*(-?\d+(?:\.\d+)?)\s*\)$")


def _clean_answer(ans: str) -> str:
    """Strip presentation around a whole answer: `$...$`, a final period, `\\textbf{..}`.

    Also `(073)` -> `073` (AIME solutions box `\\textbf{(073)}`): a parenthesized single
    number is that number; a tuple or interval always has a comma.
    """
    ans = ans.strip()
    for _ in range(3):
        prev = ans
        ans = ans.strip().strip("$").strip()
        ans = ans[:-1] if ans.endswith(".") and not ans.endswith("..") else ans
        m = _WRAPPER_RE.match(ans)
        if m and _match_braces(ans, ans.index("{")) == len(ans):
            ans = m.group(1)
        m = _PAREN_NUMBER_RE.match(ans)
        if m:
            ans = m.group(1)
        if ans == prev:
            break
    return _code_literal_to_latex(ans)


# Code-style numbers, as in Minerva-Math's references (58 of 272 are like `3.83e35`, and
# `-1./3`, `np.arcsin(10/13)`): LaTeX parsing would read `e` as Euler's number and `np.` as
# variables, so `3.83 \\times 10^{35}` would never match `3.83e35`. Only a whole answer that
# is one such literal is rewritten.
_SCI_RE = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+))[eE]([-+]?\d+)$")
_CODE_FRACTION_RE = re.compile(r"^([-+]?\d+)\.?\s*/\s*(\d+)\.?$")
_NUMPY_FN_RE = re.compile(r"\bnp\.(arcsin|arccos|arctan|sin|cos|tan|exp|log|pi)\b")


def _code_literal_to_latex(ans: str) -> str:
    """`3.83e35` -> `3.83 \\times 10^{35}`, `-1./3` -> `-1/3`, `np.arcsin(x)` -> `\\arcsin(x)`."""
    m = _SCI_RE.match(ans)
    if m:
        return f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}"
    m = _CODE_FRACTION_RE.match(ans)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    return _NUMPY_FN_RE.sub(r"\\\1", ans)


# `\\left(` / `\\right)` but not `\\leftarrow` / `\\rightarrow` (which would both become
# "arrow" and compare equal).
_SPACING_RE = re.compile(r"\\[,;:! ]|\\(?:left|right)(?![A-Za-z])|\s+|\$")


def normalize_string(ans: str) -> str:
    """Formatting-only normalization used for an exact-string fast path and for voting."""
    s = _clean_answer(ans)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _SPACING_RE.sub("", s)


# ------------------------------------------------------------------------ verification


class _SoftTimeout(BaseException):
    """Raised by SIGALRM inside `verify_one`. BaseException: math-verify and sympy catch
    `Exception` broadly, and must not swallow the deadline."""


def _call_with_alarm(fn, timeout_s: float | None):
    """Run fn() with a SIGALRM deadline when possible (main thread of a Unix process).

    The timer re-fires every 0.25 s after the deadline, so a deadline swallowed by a bare
    `except:` somewhere in sympy is raised again. It cannot interrupt a long C call (e.g. a
    big-integer power); the process pool's hard kill covers that.
    """
    usable = (
        timeout_s is not None
        and timeout_s > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        return fn()

    def handler(signum, frame):
        raise _SoftTimeout()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, timeout_s, 0.25)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _mv():
    """Import math-verify lazily, with its own signal timeouts switched off (we own them)."""
    import math_verify
    import math_verify.grader
    import math_verify.parser

    # We pass timeout=None to math-verify (its SIGALRM would cancel ours); this silences
    # the once-per-process warning that it then has no timeout.
    math_verify.parser.TIMEOUT_WARNING_SHOWN = True
    math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return math_verify


def _parse(text: str) -> list:
    mv = _mv()
    return mv.parse(text, parsing_timeout=None)


def _verify(gold: list, pred: list) -> bool:
    mv = _mv()
    return bool(mv.verify(gold, pred, timeout_seconds=None)) and not _small_numbers_differ(
        gold, pred
    )


# math-verify compares numbers to a fixed number of *decimal places* (it rounds floats to 6
# decimals and chops `(a - b).evalf()` near 0), so below 1 in magnitude it keeps ever fewer
# significant digits: it accepts 2.88e-18 for 2.88e-19, and 0 for any tiny reference, which
# physics answers (Minerva-Math) are full of. Where both sides are real numbers below 1 in
# magnitude we also require them to agree in relative terms, to about the 6 significant
# digits math-verify keeps at unit scale (so 1/3000 still matches 0.000333333).
_SMALL_MAGNITUDE = 1
_SMALL_REL_TOL = 1e-5


def _real_number(parsed: list):
    """The first parsed sympy value as a 30-digit real Float, or None if it is not one number
    (`x = 3` counts as 3)."""
    import sympy

    for e in parsed:
        if isinstance(e, str):
            continue
        if isinstance(e, sympy.Eq) and isinstance(e.lhs, sympy.Symbol):
            e = e.rhs
        if not isinstance(e, sympy.Expr) or not e.is_number:
            return None
        v = sympy.N(e, 30)
        return v if v.is_real and v.is_finite else None
    return None


def _small_numbers_differ(gold: list, pred: list) -> bool:
    """True when both answers are real numbers below 1 in magnitude that differ by more than
    `_SMALL_REL_TOL` relative (see above); False otherwise (math-verify's verdict stands)."""
    a, b = _real_number(gold), _real_number(pred)
    if a is None or b is None:
        return False
    scale = max(abs(a), abs(b))
    if scale >= _SMALL_MAGNITUDE or scale == 0:
        return False
    return bool(abs(a - b) > _SMALL_REL_TOL * scale)


def _canonical(parsed: list, fallback: str) -> str:
    for p in parsed:
        if not isinstance(p, str):
            return str(p)
    return normalize_string(fallback)


def wrap_reference(reference: str) -> str:
    """A bare reference answer (as in the data files) as text math-verify parses as LaTeX."""
    ref = reference.strip()
    if extract_boxed(ref) is not None:
        return ref
    return "\\boxed{" + _code_literal_to_latex(ref) + "}"


def verify_one(
    response: str,
    reference: str,
    *,
    fallback: Fallback = "none",
    timeout_s: float | None = 5.0,
    extracted: str | None = None,
) -> VerifyResult:
    """Verify one response against a bare reference answer, in this process.

    The soft deadline (SIGALRM) only works in the main thread and cannot stop a long C-level
    computation; use `verify_batch` (worker processes with a hard kill) in training loops.

    Args:
      response: The model's full response.
      reference: The reference answer as stored in the data files (not boxed).
      fallback: Answer extraction fallback (see `Fallback`).
      timeout_s: Soft per-item deadline in seconds for parsing + comparison; None: none.
      extracted: A precomputed `extract_answer(response, fallback=fallback)` (the pool
        extracts in the parent so a timed-out item still reports its answer).

    Returns:
      The `VerifyResult`.
    """
    if extracted is None:
        extracted = extract_answer(response, fallback=fallback)
    if extracted is None and fallback != "math_verify":
        return VerifyResult(0.0, VerifyReason.NO_ANSWER, None, None)
    if extracted is not None:
        cleaned = _clean_answer(extracted)
        pred_text = "\\boxed{" + cleaned + "}"
        canonical_fallback = cleaned
    else:
        pred_text = response  # math_verify mode, no box: math-verify extracts.
        canonical_fallback = None

    def work() -> VerifyResult:
        if extracted is not None and normalize_string(extracted) == normalize_string(reference):
            # Identical up to formatting: correct even when sympy cannot parse it (text).
            canon = _canonical(_parse(pred_text), extracted)
            return VerifyResult(1.0, VerifyReason.CORRECT, extracted, canon)
        pred = _parse(pred_text)
        if canonical_fallback is None and not pred:
            return VerifyResult(0.0, VerifyReason.NO_ANSWER, None, None)
        ext = extracted if extracted is not None else (str(pred[-1]) if pred else None)
        canon = _canonical(pred, canonical_fallback if canonical_fallback is not None else ext)
        gold = _parse(wrap_reference(reference))
        if not pred or not gold:
            return VerifyResult(0.0, VerifyReason.PARSE_ERROR, ext, canon)
        if _verify(gold, pred):
            return VerifyResult(1.0, VerifyReason.CORRECT, ext, canon)
        return VerifyResult(0.0, VerifyReason.MISMATCH, ext, canon)

    try:
        return _call_with_alarm(work, timeout_s)
    except _SoftTimeout:
        canon = normalize_string(extracted) if extracted is not None else None
        return VerifyResult(0.0, VerifyReason.TIMEOUT, extracted, canon)
    except RecursionError:
        canon = normalize_string(extracted) if extracted is not None else None
        return VerifyResult(0.0, VerifyReason.PARSE_ERROR, extracted, canon)
