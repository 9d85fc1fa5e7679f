"""Duplicate removal: exact and near duplicates decided record by record (English and Chinese), the first of a
cluster kept, the sweep's rule equal to querying a MinHashLSH before each insert, the clusters file, the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from datasketch import LeanMinHash, MinHash

from retrain.data.dedup import SCHEME, SEED, dedup_command, dedup_records, lsh_index, near_duplicates, signatures
from retrain.data.text import shingles

ROOT = Path(__file__).resolve().parents[2]
EN_Q = "How long does shipping take for an order of the blue ceramic kettle to Hamburg?"
EN_A = "Standard shipping takes three to five business days; express delivery arrives the next day."
ZH_Q = "请问这款蓝色电水壶收到货以后可以七天无理由退货吗？"
ZH_A = "可以的，商品收到后七天内未使用且包装完好即可申请无理由退货，运费由我们承担。"
ZH_OTHER = "这款台灯的灯泡坏了可以单独购买吗？", "可以，在店铺首页搜索灯泡型号即可单独下单购买。"


def rec(question: str, answer: str, **extra) -> dict:
    return {"question": question, "answer": answer, "source": "test", **extra}


def test_signatures_are_those_of_minhash_update():
    texts = [EN_Q, ZH_Q + ZH_A, "ab", "退货", "ＦＵＬＬ-width ＡＢＣ １２３", EN_A * 20]
    for num_perm in (64, 128):
        rows = signatures([shingles(t) for t in texts], num_perm)
        assert rows.dtype == np.uint32 and rows.shape == (len(texts), num_perm)
        for text, row in zip(texts, rows, strict=True):
            minhash = MinHash(num_perm=num_perm)
            for shingle in shingles(text):
                minhash.update(shingle.encode("utf-8"))
            assert np.array_equal(minhash.hashvalues, row), text


@pytest.mark.parametrize(
    "first, second, duplicate",
    [
        # one character changed in a Chinese question: near duplicate
        (rec(ZH_Q, ZH_A), rec(ZH_Q.replace("蓝色", "红色"), ZH_A), "near"),
        # one character inserted in the Chinese answer
        (rec(ZH_Q, ZH_A), rec(ZH_Q, ZH_A.replace("运费", "运费都")), "near"),
        # a different Chinese question and answer: kept
        (rec(ZH_Q, ZH_A), rec(*ZH_OTHER), None),
        # one letter changed, and a punctuation mark
        (rec(EN_Q, EN_A), rec(EN_Q.replace("Hamburg", "Hamburq"), EN_A), "near"),
        (rec(EN_Q, EN_A), rec(EN_Q, EN_A.replace(";", ",")), "near"),
        # case, spaces and full-width forms are normalized away: exact duplicate
        (rec(EN_Q, EN_A), rec(EN_Q.upper(), "  " + EN_A.replace(" ", "   ")), "exact"),
        (rec(ZH_Q, ZH_A), rec(ZH_Q.replace("？", "?"), ZH_A.replace("，", ",")), "exact"),
        # a different English question and answer
        (rec(EN_Q, EN_A), rec("Can I pay with a credit card for the walnut desk lamp?", "Yes, at checkout."), None),
        # the same question with another answer is not a duplicate of the pair
        (rec(EN_Q, EN_A), rec(EN_Q, "We do not ship kettles to Germany at the moment, sorry."), None),
    ],
)
def test_duplicates_record_by_record(first, second, duplicate):
    result = dedup_records([first, second])
    assert result.kept == ([0] if duplicate else [0, 1])
    assert [(c.kept, c.removed, c.kind) for c in result.clusters] == ([(0, (1,), duplicate)] if duplicate else [])


def test_field_question_compares_questions_only():
    records = [rec(EN_Q, EN_A), rec(EN_Q.replace("blue", "b1ue"), "Another answer altogether, nothing alike.")]
    assert dedup_records(records, field="both").kept == [0, 1]
    assert dedup_records(records, field="question").kept == [0]
    assert dedup_records(records, field="answer").kept == [0, 1]


def test_empty_texts_are_never_near_duplicates():
    records = [rec("", EN_A), rec("", "Something else entirely."), rec("", "A third answer.")]
    assert dedup_records(records, field="question").kept == [0, 1, 2]


def test_first_of_a_cluster_is_kept_and_other_keys_survive():
    records = [
        rec("unrelated question about invoices?", "unrelated answer about invoices."),
        rec(ZH_Q, ZH_A, id="a"),
        rec(ZH_Q.replace("七天", "七日"), ZH_A, id="b"),
        rec(ZH_Q, ZH_A, id="c"),  # exact copy of the second
        rec(ZH_Q, ZH_A.replace("运费", "运费都"), id="d"),
    ]
    result = dedup_records(records)
    assert result.kept == [0, 1]
    assert [c.to_json() for c in result.clusters] == [
        {"kept": 1, "removed": [3], "kind": "exact", "jaccard": [1.0]},
        {"kept": 1, "removed": [2, 4], "kind": "near", "jaccard": result.clusters[1].to_json()["jaccard"]},
    ]
    assert all(0.8 <= j < 1.0 for j in result.clusters[1].jaccard)
    assert result.removed("exact") == 1 and result.removed("near") == 2


def _one_by_one(sigs: np.ndarray, threshold: float) -> list[bool]:
    """The straightforward rule: query a MinHashLSH, keep and insert when no kept candidate is similar enough."""
    lsh, kept, keep = lsh_index(threshold, sigs.shape[1]), {}, []
    for i, row in enumerate(sigs):
        minhash = LeanMinHash(seed=SEED, hashvalues=row, scheme=SCHEME)
        keep.append(not any(minhash.jaccard(kept[key]) >= threshold for key in lsh.query(minhash)))
        if keep[-1]:
            lsh.insert(i, minhash)
            kept[i] = minhash
    return keep


def test_removed_only_by_an_earlier_kept_record():
    # A; B = A with 20 values changed in bands 0-1 (estimate 0.84); C = B with 20 more changed in bands 2-3:
    # C is similar to B (removed) but not to A (0.69), so C is kept.
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2**32, size=128, dtype=np.uint32)
    b, c = a.copy(), a.copy()
    b[:20] += 1
    c[:20] += 1
    c[26:46] += 1
    keep, clusters = near_duplicates(np.stack([a, b, c]), 0.8)
    assert keep.tolist() == [True, False, True] == _one_by_one(np.stack([a, b, c]), 0.8)
    assert [(cl.kept, cl.removed, cl.jaccard) for cl in clusters] == [(0, (1,), (108 / 128,))]


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_sweep_equals_querying_minhashlsh_one_by_one(threshold):
    rng = np.random.default_rng(7)
    rows = list(rng.integers(0, 2**32, size=(150, 128), dtype=np.uint32))
    for _ in range(350):  # copies of earlier rows (copies of copies too) with 0-50 values changed
        row = rows[rng.integers(len(rows))].copy()
        changed = rng.choice(128, size=rng.integers(0, 51), replace=False)
        row[changed] = rng.integers(0, 2**32, size=len(changed), dtype=np.uint32)
        rows.insert(int(rng.integers(len(rows) + 1)), row)
    sigs = np.stack(rows)
    keep, _ = near_duplicates(sigs, threshold)
    expected = _one_by_one(sigs, threshold)
    assert keep.tolist() == expected and 0 < sum(expected) < len(expected)


def test_cli_writes_kept_records_and_clusters(tmp_path):
    records = [rec(EN_Q, EN_A, id=1), rec(EN_Q.upper(), EN_A, id=2), rec(ZH_Q, ZH_A, id=3)]
    records += [rec(ZH_Q.replace("蓝色", "红色"), ZH_A, id=4), rec("Different?", "Quite.", id=5)]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8")
    out, clusters = tmp_path / "out" / "kept.jsonl", tmp_path / "clusters.jsonl"
    result = CliRunner().invoke(dedup_command, [str(source), "--out", str(out), "--clusters", str(clusters)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()] == [
        records[0],
        records[2],
        records[4],
    ]
    lines = [json.loads(line) for line in clusters.read_text(encoding="utf-8").splitlines()]
    assert [(c["kept"], c["removed"], c["kind"]) for c in lines] == [(0, [1], "exact"), (2, [3], "near")]
    assert lines[0]["jaccard"] == [1.0] and 0.8 <= lines[1]["jaccard"][0] < 1.0
    for words in ("in", "5", "exact duplicates removed", "near duplicates removed", "kept", "3"):
        assert words in result.output


@pytest.mark.parametrize(
    "content, args, message",
    [
        ('{"question": "q", "answer": "a"}\nnot json\n', [], "in.jsonl:2: not JSON"),
        ('["question", "answer"]\n', [], "in.jsonl:1: a JSON list, not an object"),
        ('{"question": "q", "answer": "a"}\n', ["--threshold", "0.999"], "--threshold 0.999 --num-perm 128"),
        ('{"question": "q", "answer": "a"}\n', ["--field", "source"], "Invalid value for '--field'"),
    ],
)
def test_cli_bad_inputs(tmp_path, content, args, message):
    source = tmp_path / "in.jsonl"
    source.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(dedup_command, [str(source), "--out", str(tmp_path / "out.jsonl"), *args])
    assert result.exit_code != 0 and message in result.output


def test_bench_runs_small_and_keeps_the_same_records(tmp_path):
    # A subprocess: tests do not import benchmarks (test_imports); this runs the bench's main as a user would.
    figures = tmp_path / "figures.json"
    command = [sys.executable, "-m", "bench.dedup", "--n", "1200", "--repeats", "1", "--json", str(figures)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(figures.read_text())
    assert result["identical"] is True
    assert result["planted"] > 100 and result["planted_true"] > 0 and result["called"] > 0
    assert "kept sets identical" in done.stdout
