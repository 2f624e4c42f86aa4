"""Math answer extraction and verification (the task reward r(x, y) in {0, 1}).

The reward is math-verify (HuggingFace's sympy-based verifier) applied to a response against
a reference answer, in one of two modes (`Verifier`):

* "boxed": our extraction of the final answer (the last complete `\\boxed{...}` /
  `\\fbox{...}`), compared by math-verify, plus fixes for code-style references and tiny
  numbers (the library default).
* "math_verify": the paper's reward, NeMo RL's `hf_math_verify`: math-verify's own extraction
  over the whole response, the reference wrapped as `"\\boxed{" + reference + "}"`.

This module holds the pure-Python pieces:

* `extract_answer`: the final answer of a response (the last complete `\\boxed{...}` or
  `\\fbox{...}`, nested braces allowed; optional fallbacks to "answer is ..." and to the
  last number). Linear time in the response length.
* `verify_one`: extraction + math-verify comparison of one (response, reference) pair,
  returning a `VerifyResult` (score, reason, extracted answer, canonical form for voting).
  Everything it does, extraction included, runs under its deadline.

Timeouts and parallelism live in `sharpjax.rewards.pool` (`verify_batch`, `verify`):
math-verify's own timeouts use `signal.alarm`, which only works in the main thread and
cannot interrupt a long C-level computation (a huge integer power), so batches run in
worker processes that are killed and replaced when an item overruns its deadline.

This module must not import jax: worker processes import it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import numbers
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = [
    "VERIFIERS",
    "Fallback",
    "Verifier",
    "VerifyReason",
    "VerifyResult",
    "extract_answer",
    "extract_boxed",
    "verify_one",
]

# How the reward is computed:
#   "boxed":       our extraction (the last complete \\boxed{...}, then `Fallback`), the
#                  reference as written (code-style literals like `3.83e35` read as numbers),
#                  math-verify's comparison plus a relative check on numbers below 1.
#   "math_verify": the paper's reward, NeMo RL's `hf_math_verify` (the authors' code):
#                  math-verify's own extraction over the whole response (plain expressions
#                  and LaTeX, boxed first), the reference wrapped as "\\boxed{" + ref + "}"
#                  and parsed as LaTeX, `math_verify.verify` at 6 decimals, nothing else.
Verifier = Literal["boxed", "math_verify"]
VERIFIERS = ("boxed", "math_verify")

# How to find an answer when the response has no complete \boxed{...} (verifier "boxed"):
#   "none":        boxed only (the paper's prompt asks for \boxed{}; default).
#   "answer_is":   then the text after the last "answer is" / "answer:".
#   "last_number": then "answer is", then the last number in the response.
#   "math_verify": then math-verify's own extraction over the whole response. A hybrid, not
#                  the paper's reward: that is verifier="math_verify".
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
# What brace matching looks at: a backslash with the character it escapes, or a brace.
_BRACE_TOKEN_RE = re.compile(r"\\.|[{}]", re.DOTALL)
_SPACES_RE = re.compile(r" *")
_TEX_TOKEN_RE = re.compile(r"[^\s$]+")


def _match_braces(text: str, start: int) -> int | None:
    """Index just past the brace group opening at text[start] == '{', or None if unclosed.

    Escaped braces (`\\{`, `\\}`, as in set notation) are skipped, so `\\boxed{\\{1, 2\\}}`
    extracts `\\{1, 2\\}`. A backslash always consumes the next character, so a line
    break followed by a group (`\\\\{2}` in a matrix) still opens a group.
    """
    depth = 0
    for m in _BRACE_TOKEN_RE.finditer(text, start):
        ch = m.group()
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return m.end()
    return None


def _closing_braces(text: str) -> dict[int, int]:
    """Every '{' of `text` that is closed -> the index just past its '}', in one pass.

    The same matching as `_match_braces` from each '{' (a '{' that `_match_braces` would
    start from is never escaped, so one left-to-right scan sees it too), but linear in
    len(text) instead of linear per group: scanning from every unclosed `\\boxed{` of a
    truncated response was quadratic (84 KB took 50 s).
    """
    stack: list[int] = []
    close: dict[int, int] = {}
    for m in _BRACE_TOKEN_RE.finditer(text):
        ch = m.group()
        if ch == "{":
            stack.append(m.start())
        elif ch == "}" and stack:
            close[stack.pop()] = m.end()
    return close


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}` / `\\fbox{...}` in `text`.

    Handles nested braces and the brace-less form `\\boxed 5`. A box left unclosed (a
    response truncated at the length limit) is skipped in favour of the previous complete
    one. Time is linear in len(text), whatever it holds.

    Args:
      text: A model response or reference solution.

    Returns:
      The stripped box content, or None if there is no complete, non-empty box.
    """
    boxes = list(_BOX_RE.finditer(text))
    close: dict[int, int] | None = None  # Built on the first box with a brace group.
    for m in reversed(boxes):
        # The spaces after each box end at the next box, so these scans add up to len(text).
        i = _SPACES_RE.match(text, m.end()).end()
        if i < len(text) and text[i] == "{":
            if close is None:
                close = _closing_braces(text)
            end = close.get(i)
            if end is None:
                continue
            content = text[i + 1 : end - 1].strip()
        elif i > m.end():
            # `\boxed 5`: TeX takes the next token.
            tok = _TEX_TOKEN_RE.match(text, i)
            content = tok.group(0).rstrip(".,;") if tok else ""
        else:
            continue
        if content:
            return content
    return None


_ANSWER_IS_RE = re.compile(
    # `(?:\s*:)?\s*`, not `\s*:?\s*`: two adjacent `\s*` split a long whitespace run in
    # quadratically many ways before failing.
    r"(?:final answer|answer)\s*(?:is|:)(?:\s*:)?\s*(.+?)(?:\.\s|\.?$|\n)",
    re.IGNORECASE | re.MULTILINE,
)
_NUMBER_RE = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def extract_answer(response: str, *, fallback: Fallback = "none") -> str | None:
    """The final answer of a response.

    Time is linear in len(response) (it runs in the caller: `verify_one` and the pool call it
    under the item's deadline).

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
# `\d+(?:\.\d*)?`, not `\d+\.?\d*`: the latter splits a digit run in quadratically many ways
# before failing on a string with no exponent (30K digits took 16 s).
_SCI_RE = re.compile(r"^([-+]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([-+]?\d+)$")
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


class _DropTimeoutDisabledWarning(logging.Filter):
    """Drops math-verify's "Timeout is disabled" warning and nothing else: we pass timeout=None
    on purpose (its SIGALRM would cancel ours) and bound every call with our own deadline.
    A logging filter, not a write to math-verify's private module flags, so it holds
    whatever math-verify calls them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_DROP_TIMEOUT_WARNING = _DropTimeoutDisabledWarning()
MATH_VERIFY_LOGGERS = ("math_verify.parser", "math_verify.grader")


def _mv():
    """Import math-verify lazily, its timeout-disabled warning filtered (we own the timeouts)."""
    import math_verify

    for name in MATH_VERIFY_LOGGERS:
        logger = logging.getLogger(name)
        if _DROP_TIMEOUT_WARNING not in logger.filters:
            logger.addFilter(_DROP_TIMEOUT_WARNING)
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


def as_reference(reference) -> str:
    """A reference answer as the string the verifier compares with.

    Data sets often store integer answers as numbers (GSM8K, AIME): an int or float is
    converted with `str()`; anything else that is not a string is an error (it used to score
    0 without a word).

    Raises:
      TypeError: For a reference that is neither a string nor a real number.
    """
    if isinstance(reference, str):
        return reference
    if isinstance(reference, numbers.Real) and not isinstance(reference, bool):
        return str(reference)
    raise TypeError(
        f"reference {reference!r} is a {type(reference).__name__}; pass the reference answer "
        "as a string (an int or float is converted with str())."
    )


def check_modes(verifier: str, fallback: str) -> None:
    """Raises ValueError for an unknown verifier or fallback, or a fallback the verifier ignores."""
    if verifier not in VERIFIERS:
        raise ValueError(f"verifier={verifier!r} is not one of {VERIFIERS}.")
    if fallback not in _FALLBACKS:
        raise ValueError(f"fallback={fallback!r} is not one of {_FALLBACKS}.")
    if verifier == "math_verify" and fallback != "none":
        raise ValueError(
            f"fallback={fallback!r} applies to verifier='boxed' only; verifier='math_verify' "
            "extracts with math-verify itself (use fallback='none')."
        )


class _Timer:
    """One deadline shared by the phases of `verify_one` (None: no deadline)."""

    def __init__(self, timeout_s: float | None) -> None:
        self.end = None if timeout_s is None else time.monotonic() + timeout_s

    def run(self, fn):
        if self.end is None:
            return fn()
        left = self.end - time.monotonic()
        if left <= 0:
            raise _SoftTimeout()
        return _call_with_alarm(fn, left)


def _answer_of(pred: list) -> str | None:
    """The answer string math-verify extracted (the last element of a parse), if any."""
    for p in reversed(pred):
        if isinstance(p, str) and p:
            return p
    return str(pred[0]) if pred else None


def verify_one(
    response: str,
    reference: str,
    *,
    verifier: Verifier = "boxed",
    fallback: Fallback = "none",
    timeout_s: float | None = 5.0,
    on_extracted: Callable[[str | None, str | None], None] | None = None,
) -> VerifyResult:
    """Verify one response against a bare reference answer, in this process.

    Everything runs under the deadline, extraction included: a phase that overruns it
    (a 1 MB response, a pathological expression) ends with reason TIMEOUT. The soft
    deadline (SIGALRM) only works in the main thread and cannot stop a long C-level
    computation; use `verify_batch` (worker processes with a hard kill) in training loops.

    Args:
      response: The model's full response.
      reference: The reference answer as stored in the data files (not boxed); an int or
        float is converted with `str()`.
      verifier: "boxed" or "math_verify" (the paper's reward); see `Verifier`.
      fallback: Answer extraction fallback of verifier "boxed" (see `Fallback`).
      timeout_s: Soft per-item deadline in seconds for extraction + parsing + comparison;
        None: none.
      on_extracted: Called (outside the deadline's signal) with (extracted answer, its
        normalized form) once the answer is extracted and before it is parsed and compared,
        so a caller that kills this process at its hard deadline still knows the answer.

    Returns:
      The `VerifyResult`.

    Raises:
      TypeError: For a reference that is neither a string nor a number, or a non-string
        response.
      ValueError: For an unknown verifier or fallback.
    """
    if not isinstance(response, str):
        raise TypeError(f"response is a {type(response).__name__}; pass the response text (str).")
    reference = as_reference(reference)
    check_modes(verifier, fallback)
    timer = _Timer(timeout_s)
    known: list = [None, None]  # (extracted, canonical) once known: what a timeout reports.

    try:
        if verifier == "math_verify":
            return _verify_paper(response, reference, timer, known, on_extracted)
        return _verify_boxed(response, reference, fallback, timer, known, on_extracted)
    except _SoftTimeout:
        return VerifyResult(0.0, VerifyReason.TIMEOUT, known[0], known[1])
    except RecursionError:
        return VerifyResult(0.0, VerifyReason.PARSE_ERROR, known[0], known[1])


def _report(known: list, on_extracted, extracted: str | None, canonical: str | None) -> None:
    known[0], known[1] = extracted, canonical
    if on_extracted is not None:
        on_extracted(extracted, canonical)


def _verify_boxed(response, reference, fallback, timer, known, on_extracted) -> VerifyResult:
    """Verifier "boxed": our extraction, then math-verify on the cleaned answer."""

    def extract():
        ext = extract_answer(response, fallback=fallback)
        if ext is None:
            return None, None, None
        return ext, normalize_string(ext), _clean_answer(ext)

    extracted, normalized, cleaned = timer.run(extract)
    _report(known, on_extracted, extracted, normalized)
    if extracted is None and fallback != "math_verify":
        return VerifyResult(0.0, VerifyReason.NO_ANSWER, None, None)
    if cleaned is not None:
        pred_text = "\\boxed{" + cleaned + "}"
        canonical_fallback = cleaned
    else:
        pred_text = response  # fallback "math_verify", no box: math-verify extracts.
        canonical_fallback = None

    def work() -> VerifyResult:
        if extracted is not None and normalized == normalize_string(reference):
            # Identical up to formatting: correct even when sympy cannot parse it (text).
            canon = _canonical(_parse(pred_text), extracted)
            return VerifyResult(1.0, VerifyReason.CORRECT, extracted, canon)
        pred = _parse(pred_text)
        if canonical_fallback is None and not pred:
            return VerifyResult(0.0, VerifyReason.NO_ANSWER, None, None)
        ext = extracted if extracted is not None else _answer_of(pred)
        canon = _canonical(pred, canonical_fallback if canonical_fallback is not None else ext)
        gold = _parse(wrap_reference(reference))
        if not pred or not gold:
            return VerifyResult(0.0, VerifyReason.PARSE_ERROR, ext, canon)
        if _verify(gold, pred):
            return VerifyResult(1.0, VerifyReason.CORRECT, ext, canon)
        return VerifyResult(0.0, VerifyReason.MISMATCH, ext, canon)

    return timer.run(work)


def _verify_paper(response, reference, timer, known, on_extracted) -> VerifyResult:
    """Verifier "math_verify": NeMo RL's `hf_math_verify`, which the paper's runs used.

    `math_metric(gold_extraction_target=(LatexExtractionConfig(),),
    pred_extraction_target=(ExprExtractionConfig(), LatexExtractionConfig()))` called on
    (["\\boxed{" + ground_truth + "}"], [response]): the same parses and `verify` at 6
    decimals here, with our deadline instead of math-verify's own (its SIGALRM would cancel
    ours). An exception scores 0, as there.
    """
    mv = _mv()
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    def extract():
        pred = mv.parse(
            response, (ExprExtractionConfig(), LatexExtractionConfig()), parsing_timeout=None
        )
        # str() of a sympy expression can be slow too (math_metric bounds it with a timeout).
        return pred, _answer_of(pred), (str(pred[0]) if pred else None)

    try:
        pred, extracted, canon = timer.run(extract)
    except Exception:
        return VerifyResult(0.0, VerifyReason.PARSE_ERROR, None, None)
    _report(known, on_extracted, extracted, canon)
    if not pred:
        return VerifyResult(0.0, VerifyReason.NO_ANSWER, None, None)

    def work() -> VerifyResult:
        gold = mv.parse(
            "\\boxed{" + reference + "}", (LatexExtractionConfig(),), parsing_timeout=None
        )
        if not gold:  # math_metric raises here; NeMo RL scores the exception 0.
            return VerifyResult(0.0, VerifyReason.PARSE_ERROR, extracted, canon)
        if mv.verify(gold, pred, 6, timeout_seconds=None):
            return VerifyResult(1.0, VerifyReason.CORRECT, extracted, canon)
        return VerifyResult(0.0, VerifyReason.MISMATCH, extracted, canon)

    try:
        return timer.run(work)
    except Exception:
        return VerifyResult(0.0, VerifyReason.PARSE_ERROR, extracted, canon)
