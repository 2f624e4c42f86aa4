"""python -m sharpjax.eval: a real subprocess run on a tiny saved model, forced-response
metrics through the CLI's JSON, and its error messages."""

import json
import os
import subprocess
import sys

import pytest

from sharpjax.eval import __main__ as cli
from sharpjax.eval import harness
from tests.eval.test_harness import expected_pass, fake_generate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANSWERS = {"What is 1+1?": "2", "What is 2+3?": "5", "Half of 1?": "\\frac{1}{2}"}


@pytest.fixture
def bench_file(tmp_path):
    path = tmp_path / "toy.jsonl"
    rows = [{"id": f"t{i}", "problem": q, "answer": a} for i, (q, a) in enumerate(ANSWERS.items())]
    rows.append({"id": "t3", "problem": "Unused?", "answer": "0"})  # cut by --limit 3
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_subprocess_run(hf_checkpoint, bench_file, tmp_path):
    out = tmp_path / "results.json"
    args = ["-m", "sharpjax.eval", "--model", hf_checkpoint("llama"), "--benchmarks", "toy", "--data_file",
            f"toy={bench_file}", "--n", "2", "--max_new_tokens", "4", "--batch_size", "2", "--limit", "3",
            "--ks", "1,2,4", "--num_workers", "0", "--no_progress", "--save_responses", "--out", str(out)]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    s = results["results"]["toy"]
    assert s["num_problems"] == 3 and s["num_samples"] == 2
    assert "pass@2" in s and "pass@4" not in s
    assert results["sampling"]["num_samples"] == 2 and results["sampling"]["temperature"] == 1.0
    assert [r["id"] for r in results["records"]["toy"]] == ["t0", "t1", "t2"]
    assert all(len(r["responses"]) == 2 and all(1 <= n <= 4 for n in r["lengths"]) for r in results["records"]["toy"])
    assert proc.stdout.splitlines()[0].startswith("| benchmark | problems | n | pass@1 | pass@2 | maj@1")
    assert proc.stdout.splitlines()[2].startswith("| toy | 3 | 2 |")


def test_forced_responses_through_cli(hf_checkpoint, bench_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "generate_text", fake_generate)
    out = tmp_path / "r.json"
    results = cli.main(["--model", hf_checkpoint("llama"), "--benchmarks", "toy", "--data_file", f"toy={bench_file}",
                        "--n", "4", "--limit", "3", "--num_workers", "0", "--no_progress",
                        "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == results
    s = results["results"]["toy"]
    for k in (1, 2, 4):
        assert s[f"pass@{k}"] == pytest.approx(expected_pass([2, 1, 3], k))
    assert s["maj@4"] == pytest.approx(2 / 3) and "pass@8" not in s
    assert "records" not in results
    assert "| toy | 3 | 4 | 50.0 |" in capsys.readouterr().out


def test_errors(hf_checkpoint, bench_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(tmp_path / "missing"), "--benchmarks", "toy"])
    assert e.value.code == 2 and "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", hf_checkpoint("llama"), "--benchmarks", "no_such_bench", "--data_dir", str(tmp_path)])
    assert "no_such_bench" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", hf_checkpoint("llama"), "--benchmarks", "toy",
                  "--data_file", f"toy={tmp_path}/nope.jsonl"])
    assert "no such file" in str(e.value.code)
    with pytest.raises(SystemExit) as e:  # checked for every benchmark before any sampling
        cli.main(["--model", hf_checkpoint("llama"), "--benchmarks", "toy", "--data_file", f"toy={bench_file}",
                  "--max_new_tokens", "16384", "--no_progress"])  # fmt: skip
    assert "'toy'" in str(e.value.code) and "exceeds the model's context of 16384" in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", hf_checkpoint("llama"), "--data_file", "toy"])
    assert e.value.code == 2 and "NAME=PATH" in capsys.readouterr().err


def test_data_file_errors_name_the_file_and_line(tmp_path):
    # issue 16, item 7: the CLI reads --data_file with sharpjax.data.load_dataset, so an empty
    # file is an error (not "argmax of an empty sequence" later) and a malformed line is
    # reported at its line in the file (json's own lineno is 1 within the line).
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(SystemExit) as e:
        cli.load_benchmarks(["toy"], data_files={"toy": str(empty)}, data_dir=None, limit=None)
    assert "holds no problems" in str(e.value.code) and str(empty) in str(e.value.code)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1?", "answer": "2"}\n\n{"problem": "2+2?", "answer": "4"}\n{"problem": "3+3?",\n')
    with pytest.raises(SystemExit) as e:
        cli.load_benchmarks(["toy"], data_files={"toy": str(bad)}, data_dir=None, limit=None)
    assert f"{bad}:4: not valid JSON" in str(e.value.code)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"problem": "1+1?"}\n')
    with pytest.raises(SystemExit) as e:
        cli.load_benchmarks(["toy"], data_files={"toy": str(missing)}, data_dir=None, limit=None)
    assert f"{missing}:1: missing required field 'answer'" in str(e.value.code)


def test_loads_named_benchmarks_from_data_dir(data_dir):  # skips without the data; fails under CI=true
    got = cli.load_benchmarks(["aime24", "math500"], data_files={}, data_dir=str(data_dir), limit=2)
    assert list(got) == ["aime24", "math500"] and [len(v) for v in got.values()] == [2, 2]
    assert got["aime24"][0].id == "2024_AIME_I-1" and got["aime24"][0].answer == "204"


@pytest.mark.parametrize("flag, value", [("--n", "0"), ("--batch_size", "0"), ("--batch_size", "-2"),
                                         ("--max_new_tokens", "0"), ("--limit", "0")])
def test_non_positive_counts_fail_before_loading_the_model(bench_file, tmp_path, monkeypatch, capsys, flag, value):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr("sharpjax.models.hf.load_model", no_model)
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(tmp_path), "--benchmarks", "toy", "--data_file", f"toy={bench_file}", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{flag} {value}: must be a positive integer" in err, err


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "nan", "--temperature nan: must be a finite number > 0"),
    ("--temperature", "inf", "--temperature inf: must be a finite number > 0"),
    ("--alpha", "inf", "--alpha inf: must be a finite number > 0"),
    ("--alpha", "nan", "--alpha nan: must be a finite number > 0"),
    ("--top_p", "0", "--top_p 0.0: must be in (0, 1]"),
    ("--verify_timeout", "inf", "--verify_timeout inf: must be in (0, 3600] seconds"),
    ("--maj_draws", "0", "--maj_draws 0: must be a positive integer"),
    ("--ks", "1,x", "--ks 1,x: expected positive integers"),
])
def test_bad_numbers_fail_in_one_line_before_loading_the_model(bench_file, tmp_path, monkeypatch, capsys, flag,
                                                               value, message):
    """Issue 27, bug 5: `--temperature nan` ran to the end (every response empty, exit 0); `--alpha inf`
    failed late with a JAX traceback."""
    monkeypatch.setattr("sharpjax.models.hf.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(tmp_path), "--benchmarks", "toy", "--data_file", f"toy={bench_file}", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.strip().splitlines()[-1].startswith("python -m sharpjax.eval")


def test_an_unwritable_out_fails_before_the_model_loads(bench_file, tmp_path, monkeypatch, capsys):
    """Issue 27, bug 4: the error came after all the sampling, and the table was never printed."""
    monkeypatch.setattr("sharpjax.models.hf.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    for out, message in ((tmp_path / "no_dir" / "r.json", f"the directory {tmp_path / 'no_dir'} does not exist"),
                         (tmp_path, "is a directory; give a file path")):
        with pytest.raises(SystemExit) as e:
            cli.main(["--model", str(tmp_path), "--benchmarks", "toy", "--data_file", f"toy={bench_file}",
                      "--out", str(out)])
        assert e.value.code == 2 and f"--out {out}: {message}" in capsys.readouterr().err


def test_the_table_is_printed_even_when_out_cannot_be_written(hf_checkpoint, bench_file, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setattr(harness, "generate_text", fake_generate)
    monkeypatch.setattr(cli, "_check_out", lambda parser, out: None)  # the disk changed after the check
    out = tmp_path / "gone" / "r.json"
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", hf_checkpoint("llama"), "--benchmarks", "toy", "--data_file", f"toy={bench_file}",
                  "--n", "4", "--limit", "3", "--num_workers", "0", "--no_progress", "--out", str(out)])
    assert "| toy | 3 | 4 | 50.0 |" in capsys.readouterr().out
    assert str(e.value.code).startswith(f"error: --out {out}: cannot write it (")


def test_a_damaged_tokenizer_fails_in_one_line_before_the_model_loads(hf_checkpoint, bench_file, tmp_path,
                                                                      monkeypatch, capsys):
    """Issue 27: a truncated tokenizer.json was a JSONDecodeError traceback after the weights loaded."""
    import shutil

    model = shutil.copytree(hf_checkpoint("llama"), tmp_path / "m")
    (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text()[:500])
    monkeypatch.setattr("sharpjax.models.hf.load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(model), "--benchmarks", "toy", "--data_file", f"toy={bench_file}"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and last.startswith(f"python -m sharpjax.eval: error: --model {model}: "
                                                 f"{model}/tokenizer.json cannot be read as a tokenizer ("), last


def test_max_total_length_budget_is_per_prompt(hf_checkpoint, tmp_path):
    """--max_total_length: a problem's budget is that minus its own prompt, whatever its batch holds."""
    from sharpjax.eval.harness import default_render_fn
    from sharpjax.models.tokenizer import load_tokenizer

    model = hf_checkpoint("llama")
    problems = {"short": "1+1?", "long": "Add up every one of these numbers: " + " + ".join(["12"] * 25) + "?"}
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps({"id": k, "problem": q, "answer": "2"}) + "\n" for k, q in problems.items()))
    tokenizer, total = load_tokenizer(model), 300
    render = default_render_fn(tokenizer)
    own = {k: len(tokenizer(render(q), add_special_tokens=False)["input_ids"]) for k, q in problems.items()}
    assert own == {"short": 130, "long": 284}  # one batch of both pads to the 512 bucket

    out = cli.main(["--model", model, "--benchmarks", "two", "--data_file", f"two={path}", "--n", "1",
                    "--max_total_length", str(total), "--ignore_eos", "--batch_size", "2",
                    "--num_workers", "0", "--no_progress", "--save_responses"])  # fmt: skip
    # ignore_eos: each response uses its whole budget; the short one is not cut to 300 - 256 = 44.
    assert {r["id"]: r["lengths"] for r in out["records"]["two"]} == {"short": [total - 130], "long": [total - 284]}
