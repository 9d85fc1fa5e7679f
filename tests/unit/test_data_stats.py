"""`flywheel data stats`: figures checked exactly on small English and Chinese data whose answer is known,
Chinese words segmented, warnings on low-diversity data only, valid PNGs and the report files."""

from __future__ import annotations

import json
import struct

import pytest
from click.testing import CliRunner

from retrain.data.stats import Sample, compute, distinct_n, frequent_words, percentiles, read_samples, stats_command

RETURNS = "You can return items within 30 days of delivery."
# Four records, two of them the same after normalizing (case, spacing): one duplicate left.
FOUR = [
    {"question": "What is the return window?", "answer": RETURNS, "source": "faq"},
    {"question": "  what is the RETURN window? ", "answer": RETURNS, "source": "faq"},
    {"question": "退货需要多久？", "answer": "退货在收到商品后5个工作日内处理完成。", "source": "chat"},
    {"question": "如何申请退货？", "answer": "在订单页面点击申请退货，填写原因即可。", "source": "chat"},
]
DIVERSE = [
    Sample("What is the return window for shoes?", "You can return shoes within 30 days of delivery.", "faq"),
    Sample("Do you ship to Canada?", "Yes, we ship to Canada; delivery takes five to seven business days.", "faq"),
    Sample(
        "How can I change my delivery address?", "Open your order page and edit the address before it ships.", "faq"
    ),
    Sample("退货需要多久？", "退货在收到商品后五个工作日内处理完成，退款原路返回。", "chat"),
    Sample("运费由谁承担？", "质量问题的退货运费由我们承担，其他情况由买家承担。", "chat"),
    Sample("可以开发票吗？", "可以，下单时填写发票抬头，电子发票会发送到您的邮箱。", "chat"),
]
# One question asked six ways with one-line answers: repetitive and curt.
TEMPLATED = [
    Sample("How do I return an item?", answer, "faq")
    for answer in ["Use the form.", "Call us.", "Mail it back.", "Ask support.", "Via the app.", "At a store."]
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def samples_of(records) -> list[Sample]:
    return [Sample(r["question"], r["answer"], r["source"]) for r in records]


def test_figures_on_four_records_with_one_duplicate():
    figures, lengths = compute(samples_of(FOUR))
    assert figures["counts"] == {
        "records": 4,
        "qa": 4,
        "dpo": 0,
        "empty_answers": 0,
        "chosen_equals_rejected": 0,
        "sources": {"faq": 2, "chat": 2},
    }
    assert figures["duplicates"] == {"exact": 1, "near": 0}
    assert lengths["question_chars"] == [26, 29, 7, 7]  # a Chinese character counts one
    assert lengths["question_words"] == [5, 5, 3, 3]  # 退货/需要/多久, 如何/申请/退货
    assert figures["diversity"] == {
        "unique_questions": 3,
        "unique_question_share": 0.75,
        "distinct_first_words": 3,  # what, 退货, 如何
        "distinct_first_bigrams": 3,
        "distinct_1": 10 / 16,
        "distinct_2": 8 / 12,
    }
    # Chinese comes out as jieba words, not characters; stopwords (what, is, the, 如何) are left out
    assert figures["frequent_words"]["question"] == [
        ("return", 2),
        ("window", 2),
        ("退货", 2),
        ("需要", 1),
        ("多久", 1),
        ("申请", 1),
    ]
    assert ("退货", 2) in figures["frequent_words"]["answer"]
    assert figures["warnings"] == ["many duplicates: 1 exact and 0 near of 4 records (want <= 10%); run the dedup step"]


def test_near_duplicate_is_counted_once():
    base = Sample("What is the return window?", RETURNS, "faq")
    near = Sample(base.question, "You can return items within 30 days of delivery!", "faq")
    figures, _ = compute([base, near, DIVERSE[1]])
    assert figures["duplicates"] == {"exact": 0, "near": 1}


def test_percentiles_interpolate_between_ranks():
    expected = {"min": 2, "p25": 3.5, "median": 5, "p75": 6.5, "p95": 7.7, "max": 8, "mean": 5}
    assert percentiles([8, 2, 6, 4]) == pytest.approx(expected)


@pytest.mark.parametrize(
    "sequences, n, expected",
    [
        ([["a", "b", "a", "b"]], 1, 2 / 4),
        ([["a", "b", "a", "b"]], 2, 2 / 3),  # ab, ba, ab
        ([["a"], ["a"]], 2, 0.0),  # no bigrams at all
        ([["退货", "需要"], ["退货", "需要"]], 2, 1 / 2),
    ],
)
def test_distinct_n(sequences, n, expected):
    assert distinct_n(sequences, n) == pytest.approx(expected)


def test_frequent_words_skip_stopwords_and_numbers():
    assert frequent_words(["The kettle is 1.7 liters", "我的水壶是白色的", "the KETTLE"], top=3) == [
        ("kettle", 2),
        ("liters", 1),
        ("水壶", 1),
    ]


def test_warnings_fire_on_templated_data_and_not_on_diverse_data():
    figures, _ = compute(TEMPLATED)
    assert [w.split(":")[0] for w in figures["warnings"]] == ["low diversity", "short outputs"]
    assert figures["diversity"]["unique_question_share"] == pytest.approx(1 / 6)
    figures, _ = compute(DIVERSE)
    assert figures["warnings"] == []
    assert figures["duplicates"] == {"exact": 0, "near": 0}


def test_dpo_pairs_read_the_last_user_turn_and_flag_equal_answers(tmp_path):
    pairs = [
        {"prompt": "What is the return window?", "chosen": "30 days from delivery.", "rejected": "No idea."},
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "运费谁付？"}],
            "chosen": "退货运费由我们承担。",
            "rejected": "退货运费由我们承担。",
        },
    ]
    samples = read_samples(write(tmp_path / "pairs.jsonl", pairs))
    assert samples[1] == Sample("运费谁付？", "退货运费由我们承担。", "", "退货运费由我们承担。")
    figures, _ = compute(samples)
    assert figures["counts"]["dpo"] == 2 and figures["counts"]["chosen_equals_rejected"] == 1
    assert "1 pair(s) with the same chosen and rejected answer" in figures["warnings"]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_command_writes_markdown_pngs_and_json(tmp_path):
    import matplotlib.image

    out = tmp_path / "report"
    result = CliRunner().invoke(stats_command, [write(tmp_path / "qa.jsonl", FOUR), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "records" in result.output and "many duplicates" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["length_chars.png", "length_words.png", "report.md", "stats.json"]
    for name in ("length_chars.png", "length_words.png"):
        width, height = png_size(out / name)
        assert width > 100 and height > 100
        assert matplotlib.image.imread(out / name).shape[:2] == (height, width)  # decodes as an image
    report = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("Counts", "Lengths", "Instruction diversity", "Most frequent words", "Duplicates left", "Warnings"):
        assert f"\n## {heading}\n" in report
    assert "| exact (after normalizing) | 1 |" in report and "![length_chars](length_chars.png)" in report
    assert "| 退货 | 2 |" in report
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["duplicates"] == {"exact": 1, "near": 0} and stats["counts"]["records"] == 4


def test_command_html(tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(stats_command, [write(tmp_path / "qa.jsonl", FOUR), "--out", str(out), "--html"])
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert not (out / "report.md").exists()
    assert "<img src='length_words.png'" in page and "<td>退货</td>" in page and "<h2>Warnings</h2>" in page


@pytest.mark.parametrize(
    "record, message",
    [
        ({"question": "Hi?"}, "line 2: 'answer' is missing"),
        ({"prompt": "Hi?", "chosen": "Hello."}, "line 2: 'rejected' is missing"),
        ({"text": "neither"}, "line 2: neither a QA record"),
    ],
)
def test_command_names_the_bad_line(tmp_path, record, message):
    path = write(tmp_path / "qa.jsonl", [FOUR[0], record])
    result = CliRunner().invoke(stats_command, [path, "--out", str(tmp_path / "report")])
    assert result.exit_code == 1 and message in result.output
