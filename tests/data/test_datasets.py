"""Dataset loaders on the real benchmark files, their errors, and the paper's prompt.

Expected counts and per-subject tallies come from the data directory's README (parsed here,
and also written out below so a README edit cannot silently move both sides).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import re
import sys
import types

import pytest

from sharpjax.data import (
    DEEPSCALER_HUB_ID,
    PROMPT_TEMPLATE,
    Problem,
    available_datasets,
    format_prompt,
    load_dataset,
    render_prompt,
    render_prompts,
)

# Line counts from the data README's table.
EXPECTED_COUNTS = {
    "math500": 500,
    "minerva_math": 272,
    "aime24": 30,
    "aime25": 30,
    "hmmt_feb25": 30,
    "math_train": 7498,
    "gsm8k_test": 1319,
    "gsm8k_train": 7473,
}
WITH_SOLUTIONS = {"math500", "minerva_math", "aime24", "gsm8k_test", "gsm8k_train"}
MATH_SUBJECTS = {
    "Algebra",
    "Intermediate Algebra",
    "Prealgebra",
    "Geometry",
    "Number Theory",
    "Counting & Probability",
    "Precalculus",
}


def _readme_table(data_dir) -> dict[str, tuple[int, str]]:
    """{file stem: (count, sha256)} from the README's markdown table."""
    rows = {}
    for line in (data_dir / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*(\w+)\.jsonl\s*\|\s*(\d+)\s*\|.*\|\s*([0-9a-f]{64})\s*\|\s*$", line)
        if m:
            rows[m.group(1)] = (int(m.group(2)), m.group(3))
    return rows


@pytest.fixture(scope="module")
def loaded(data_dir):
    """Every local dataset, loaded once for the module: {name: list[Problem]}."""
    return {name: load_dataset(name, data_dir=data_dir) for name in EXPECTED_COUNTS}


# ----------------------------------------------------------------------- real files


def test_readme_table_matches_expected_counts(data_dir):
    table = _readme_table(data_dir)
    assert {k: v[0] for k, v in table.items()} == EXPECTED_COUNTS


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_counts_fields_and_checksums(loaded, data_dir, name):
    problems = loaded[name]
    count, sha = _readme_table(data_dir)[name]
    assert len(problems) == count == EXPECTED_COUNTS[name]
    # The files are the ones the README describes (counts refer to these bytes).
    assert hashlib.sha256((data_dir / f"{name}.jsonl").read_bytes()).hexdigest() == sha
    assert len({p.id for p in problems}) == len(problems)
    for p in problems:
        assert isinstance(p, Problem)
        assert p.problem.strip() and p.answer.strip() and p.source
        assert p.answer == p.answer.strip()
    has_solution = [p.solution is not None for p in problems]
    assert all(has_solution) if name in WITH_SOLUTIONS else not any(has_solution)


def test_loader_is_faithful_to_the_raw_lines(loaded, data_dir):
    """Field by field against json.loads of the file (no silent rewriting)."""
    for name in ("math500", "minerva_math", "hmmt_feb25"):
        raw = [json.loads(line) for line in (data_dir / f"{name}.jsonl").read_text().splitlines()]
        for row, p in zip(raw, loaded[name], strict=True):
            assert (p.id, p.problem, p.answer, p.solution, p.source) == (
                row["id"],
                row["problem"],
                row["answer"].strip(),
                row.get("solution"),
                row["source"],
            )


def test_math500_levels_and_subjects(loaded):
    problems = loaded["math500"]
    assert {p.level for p in problems} == {1, 2, 3, 4, 5}
    assert {p.subject for p in problems} == MATH_SUBJECTS
    assert problems[0].id == "test/precalculus/807.json"
    assert problems[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_math_train_subjects_levels_and_no_overlap(loaded):
    problems = loaded["math_train"]
    # Per-subject counts of the Hendrycks MATH train split, as in the README.
    assert collections.Counter(p.subject for p in problems) == {
        "Algebra": 1744,
        "Intermediate Algebra": 1295,
        "Prealgebra": 1205,
        "Geometry": 870,
        "Number Theory": 869 - 2,  # The two empty-answer rows were dropped.
        "Counting & Probability": 771,
        "Precalculus": 746,
    }
    levels = collections.Counter(p.level for p in problems)
    assert set(levels) == {1, 2, 3, 4, 5, None} and levels[None] == 2  # "Level ?"
    assert all(p.id.startswith("train/") for p in problems)
    assert not {p.problem for p in problems} & {p.problem for p in loaded["math500"]}


@pytest.mark.parametrize("name", ["gsm8k_train", "gsm8k_test"])
def test_gsm8k_answers_are_the_text_after_hashes(loaded, name):
    for p in loaded[name]:
        assert re.fullmatch(r"-?\d+(\.\d+)?", p.answer), p
        assert p.answer == p.solution.rsplit("####", 1)[1].strip().replace(",", "")


@pytest.mark.parametrize("name", ["aime24", "aime25"])
def test_aime_answers_are_integers_0_999(loaded, name):
    problems = loaded[name]
    assert all(
        re.fullmatch(r"\d{1,3}", p.answer) and str(int(p.answer)) == p.answer for p in problems
    )
    assert sum("_I-" in p.id for p in problems) == sum("_II-" in p.id for p in problems) == 15


def test_hmmt_keeps_latex_and_two_answer_problem(loaded):
    by_id = {p.id: p for p in loaded["hmmt_feb25"]}
    assert by_id["hmmt_feb_2025-10"].answer.count("\\sqrt{17}") == 2
    assert any("\\frac" in p.answer for p in by_id.values())


def test_limit_is_a_prefix(loaded, data_dir):
    full = loaded["math_train"]
    assert load_dataset("math_train", data_dir=data_dir, limit=5) == full[:5]
    assert load_dataset("math_train", data_dir=data_dir, limit=0) == []
    assert load_dataset("aime24", data_dir=data_dir, limit=10**6) == loaded["aime24"]


def test_env_var_is_the_default_data_dir(loaded, data_dir, monkeypatch):
    monkeypatch.setenv("SHARPJAX_DATA_DIR", str(data_dir))
    assert load_dataset("aime25") == loaded["aime25"]


def test_path_reads_one_file_under_any_name(loaded, data_dir):
    assert load_dataset("deepscaler", path=data_dir / "aime24.jsonl") == loaded["aime24"]


# --------------------------------------------------------------------------- errors


def test_available_datasets_names_every_loader():
    names = available_datasets()
    assert set(names) == set(EXPECTED_COUNTS) | {"deepscaler"}
    assert all(isinstance(v, str) and v for v in names.values())


@pytest.mark.parametrize("name", ["math-500", "MATH500", "", "hub:"])
def test_unknown_name_lists_known_names(name, tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset .*known: math500, minerva_math"):
        load_dataset(name, data_dir=tmp_path)


@pytest.mark.parametrize("limit", [-1, 1.5, True, "3"])
def test_bad_limit(limit, tmp_path):
    with pytest.raises(ValueError, match="limit"):
        load_dataset("math500", data_dir=tmp_path, limit=limit)


def test_no_data_dir_says_to_set_the_env_var(monkeypatch):
    monkeypatch.delenv("SHARPJAX_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="set the environment variable SHARPJAX_DATA_DIR"):
        load_dataset("math500")


def test_missing_dir_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPJAX_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=r"nope.*from \$SHARPJAX_DATA_DIR"):
        load_dataset("math500")
    with pytest.raises(FileNotFoundError, match=r"math500\.jsonl.*SHARPJAX_DATA_DIR"):
        load_dataset("math500", data_dir=tmp_path)


def _write(tmp_path, lines, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = json.dumps({"id": "a", "problem": "1+1?", "answer": "2"})


@pytest.mark.parametrize(
    "bad_line, match",
    [
        ('{"id": "b", "problem": "x"', r"bad\.jsonl:3: not valid JSON"),
        (json.dumps({"id": "b", "problem": "x"}), r"bad\.jsonl:3: missing required field 'answer'"),
        (json.dumps({"id": "b", "answer": "x"}), r"bad\.jsonl:3: missing required field 'problem'"),
        (json.dumps({"id": "b", "problem": "  ", "answer": "1"}), r"bad\.jsonl:3: field 'problem'"),
        (json.dumps({"id": "b", "problem": "x", "answer": ""}), r"bad\.jsonl:3: field 'answer'"),
        (json.dumps({"id": "b", "problem": "x", "answer": None}), r"bad\.jsonl:3: field 'answer'"),
        (
            json.dumps({"id": "b", "problem": "x", "answer": "1", "solution": 3}),
            r":3: field 'solution'",
        ),
        (json.dumps(["problem", "answer"]), r"bad\.jsonl:3: expected a JSON object"),
        (json.dumps({"id": "a", "problem": "x", "answer": "1"}), r"id 'a' appears twice"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path, bad_line, match):
    path = _write(tmp_path, [GOOD, "", bad_line])  # Line 2 blank: skipped, still counted.
    with pytest.raises(ValueError, match=match):
        load_dataset("math500", path=path)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="holds no problems"):
        load_dataset("math500", path=_write(tmp_path, [""]))


def test_raw_gsm8k_rows_and_json_arrays(tmp_path):
    raw = {"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,007"}
    p = load_dataset("gsm8k_test", path=_write(tmp_path, [json.dumps(raw)]))[0]
    assert (p.problem, p.answer, p.solution) == ("How many?", "1007", raw["answer"])
    assert (p.id, p.source) == ("gsm8k_test-0", "gsm8k_test")
    # DeepScaleR's release is one JSON array of {problem, answer, solution}.
    rows = [{"problem": f"q{i}", "answer": str(i), "solution": f"s{i}"} for i in range(4)]
    (tmp_path / "ds.json").write_text(json.dumps(rows, indent=1))
    ps = load_dataset("deepscaler", path=tmp_path / "ds.json", limit=3)
    assert [(p.id, p.problem, p.answer, p.solution) for p in ps] == [
        (f"deepscaler-{i}", f"q{i}", str(i), f"s{i}") for i in range(3)
    ]
    (tmp_path / "bad.json").write_text('[{"problem": "q", "answer": "1"},\n{"problem": }]')
    with pytest.raises(ValueError, match=r"bad\.json:2: not valid JSON"):
        load_dataset("deepscaler", path=tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text('[{"problem": "q"}]')
    with pytest.raises(ValueError, match=r"bad2\.json\[0\]: missing required field 'answer'"):
        load_dataset("deepscaler", path=tmp_path / "bad2.json")


def test_level_strings_and_numeric_answers(tmp_path):
    lines = [
        json.dumps({"problem": "p", "answer": 12, "level": "Level 4", "type": "Algebra"}),
        json.dumps({"problem": "p", "answer": "x", "level": "Level ?", "unique_id": "u/1"}),
    ]
    a, b = load_dataset("math_train", path=_write(tmp_path, lines))
    assert (a.answer, a.level, a.subject, a.id) == ("12", 4, "Algebra", "math_train-0")
    assert (b.level, b.id) == (None, "u/1")


def test_deepscaler_without_datasets_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` -> ImportError.
    with pytest.raises(ImportError, match=r"pip install datasets.*path="):
        load_dataset("deepscaler")


def _fake_datasets(monkeypatch, load):
    mod = types.ModuleType("datasets")
    mod.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", mod)


def test_hub_rows_go_through_the_same_parser(monkeypatch):
    calls = []

    def load(hub_id, split):
        calls.append((hub_id, split))
        return [{"problem": f"q{i}", "answer": f"{i}", "solution": None} for i in range(5)]

    _fake_datasets(monkeypatch, load)
    ps = load_dataset("deepscaler", limit=2)
    assert calls == [(DEEPSCALER_HUB_ID, "train")]
    assert [(p.id, p.answer, p.source) for p in ps] == [
        ("deepscaler-0", "0", DEEPSCALER_HUB_ID),
        ("deepscaler-1", "1", DEEPSCALER_HUB_ID),
    ]
    assert len(load_dataset("hub:someone/math", split="test")) == 5
    assert calls[-1] == ("someone/math", "test")


def test_hub_offline_says_to_pass_a_path(monkeypatch):
    def load(hub_id, split):
        raise ConnectionError("no network")

    _fake_datasets(monkeypatch, load)
    with pytest.raises(RuntimeError, match=r"ConnectionError: no network.*pass path="):
        load_dataset("deepscaler")


def test_problem_is_frozen_and_hashable():
    p = Problem(id="a", problem="q", answer="1", solution=None, source="s")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.answer = "2"  # type: ignore[misc]
    assert hash(p) == hash(Problem(id="a", problem="q", answer="1", solution=None, source="s"))


# --------------------------------------------------------------------------- prompts

# PAPER.md "Prompt": written out by hand, not built from PROMPT_TEMPLATE; with the two backslashes
# of the authors' raw prompt file (issue 26, item 7).
PAPER_PROMPT_FOR_2_PLUS_2 = (
    "Think step-by-step to solve the following problem. "
    "Output your answer inside of \\\\boxed{} tags.:\n"
    "What is $2+2$?\n"
    "\n"
    "Let's think step-by-step"
)


def test_format_prompt_is_the_papers_text():
    assert format_prompt("What is $2+2$?") == PAPER_PROMPT_FOR_2_PLUS_2
    assert PROMPT_TEMPLATE.count("\\") == 2  # two backslash characters before "boxed"
    p = Problem(id="x", problem="What is $2+2$?", answer="4", solution=None, source="t")
    assert format_prompt(p) == PAPER_PROMPT_FOR_2_PLUS_2
    assert PROMPT_TEMPLATE.count("{problem}") == 1


@pytest.mark.parametrize("text", ["Find $\\{x\\}$ and {problem} and {}.", "{0} {x!r}", ""])
def test_problem_text_is_inserted_verbatim(text):
    out = format_prompt(text)
    head, tail = PAPER_PROMPT_FOR_2_PLUS_2.split("What is $2+2$?")
    assert out == head + text + tail


def test_format_prompt_rejects_non_text():
    with pytest.raises(TypeError, match="problem text"):
        format_prompt(3)  # type: ignore[arg-type]


def test_render_prompt_uses_the_chat_template():
    from sharpjax.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    # The char tokenizer's template: <|role|>content<|end|>, then <|assistant|> (generation
    # prompt on), no system turn.
    expected = "<|user|>" + PAPER_PROMPT_FOR_2_PLUS_2 + "<|end|><|assistant|>"
    assert render_prompt(tok, "What is $2+2$?") == expected
    assert render_prompts(tok, ["What is $2+2$?"] * 2) == [expected] * 2
    ids = tok(expected, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.decode(ids) == expected

    tok.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        render_prompt(tok, "x")


def test_path_accepts_any_name(tmp_path):
    # The docstring's promise (issue 16, item 7): with path= the name only labels the problems.
    path = _write(tmp_path, [json.dumps({"problem": "1+1?", "answer": "2"})])
    (problem,) = load_dataset("my_benchmark", path=path)
    assert (problem.id, problem.source, problem.answer) == ("my_benchmark-0", "my_benchmark", "2")


def test_utf8_bom_is_accepted_and_non_utf8_names_file_and_line(tmp_path):
    """Issue 27: a BOM (valid UTF-8 text, written by Windows editors) failed line 1 as invalid JSON;
    a Latin-1 byte raised a UnicodeDecodeError that named neither file nor line."""
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + b'{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?", "answer": "4"}\n')
    assert [p.answer for p in load_dataset("x", path=bom)] == ["2", "4"]
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"problem": "1+1?", "answer": "2"}\n{"problem": "caf\xe9?", "answer": "4"}\n')
    with pytest.raises(ValueError, match=rf"^{latin1}:2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8\.$"):
        load_dataset("x", path=latin1)
