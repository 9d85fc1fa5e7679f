"""`flywheel data format`: exact rows for each format with and without a system prompt, LLaMA-Factory's
dataset_info.json, a `datasets` round trip, and errors that name the line of a bad record."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from retrain.data.formats import convert, dataset_info_entry, format_command
from retrain.data.records import RecordError, read_jsonl

SYSTEM = "You are Brightleaf's support assistant."
QA = [
    {"question": "What is the return window?", "answer": "30 days from delivery.", "source": "faq"},
    {"question": "退货需要多久？", "answer": "收货后5个工作日内处理。", "source": "chat"},
]
PAIRS = [
    {"prompt": "What is the return window?", "chosen": "30 days from delivery.", "rejected": "No idea."},
    {
        "prompt": [{"role": "system", "content": "旧的系统提示"}, {"role": "user", "content": "运费谁付？"}],
        "chosen": "退货运费由我们承担。",
        "rejected": "你自己付。",
    },
]


def write(path, records) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def numbered(records):
    return list(enumerate(records, start=1))


def test_alpaca():
    assert convert(numbered(QA), "alpaca") == [
        {"instruction": "What is the return window?", "input": "", "output": "30 days from delivery."},
        {"instruction": "退货需要多久？", "input": "", "output": "收货后5个工作日内处理。"},
    ]
    assert convert(numbered(QA), "alpaca", SYSTEM)[1] == {
        "instruction": "退货需要多久？",
        "input": "",
        "output": "收货后5个工作日内处理。",
        "system": SYSTEM,
    }


def test_sharegpt():
    assert convert(numbered(QA), "sharegpt") == [
        {
            "conversations": [
                {"from": "human", "value": "What is the return window?"},
                {"from": "gpt", "value": "30 days from delivery."},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "退货需要多久？"},
                {"from": "gpt", "value": "收货后5个工作日内处理。"},
            ]
        },
    ]
    assert convert(numbered(QA[:1]), "sharegpt", SYSTEM) == [
        {
            "conversations": [
                {"from": "system", "value": SYSTEM},
                {"from": "human", "value": "What is the return window?"},
                {"from": "gpt", "value": "30 days from delivery."},
            ]
        }
    ]


def test_dpo_prompt_becomes_messages_and_system_comes_first():
    assert convert(numbered(PAIRS), "dpo") == [
        {
            "prompt": [{"role": "user", "content": "What is the return window?"}],
            "chosen": "30 days from delivery.",
            "rejected": "No idea.",
        },
        PAIRS[1],  # already messages: unchanged
    ]
    with_system = convert(numbered(PAIRS), "dpo", SYSTEM)
    assert [row["prompt"] for row in with_system] == [
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the return window?"}],
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "运费谁付？"}],  # --system replaces
    ]
    assert with_system[1]["chosen"] == "退货运费由我们承担。" and with_system[1]["rejected"] == "你自己付。"


def test_cli_writes_jsonl_dataset_and_llamafactory(tmp_path):
    from datasets import load_from_disk

    src = write(tmp_path / "qa.jsonl", QA)
    args = [src, "--to", "sharegpt", "--system", SYSTEM, "--out", str(tmp_path / "out.jsonl")]
    args += ["--dataset", str(tmp_path / "ds"), "--llamafactory", str(tmp_path / "lf"), "--name", "shop"]
    result = CliRunner().invoke(format_command, args)
    assert result.exit_code == 0, result.output
    expected = convert(numbered(QA), "sharegpt", SYSTEM)
    assert lines(tmp_path / "out.jsonl") == expected
    assert "退货需要多久" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")  # not \u escapes
    assert load_from_disk(str(tmp_path / "ds")).to_list() == expected
    assert lines(tmp_path / "lf" / "shop.jsonl") == expected
    assert json.loads((tmp_path / "lf" / "dataset_info.json").read_text()) == {
        "shop": {
            "file_name": "shop.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "conversations"},
            "tags": {
                "role_tag": "from",
                "content_tag": "value",
                "user_tag": "human",
                "assistant_tag": "gpt",
                "system_tag": "system",
            },
        }
    }


def test_llamafactory_alpaca_keeps_other_datasets(tmp_path):
    folder = tmp_path / "lf"
    folder.mkdir()
    (folder / "dataset_info.json").write_text(json.dumps({"identity": {"file_name": "identity.json"}}))
    src = write(tmp_path / "qa.jsonl", QA)
    result = CliRunner().invoke(
        format_command, [src, "--to", "alpaca", "--system", SYSTEM, "--llamafactory", str(folder)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((folder / "dataset_info.json").read_text()) == {
        "identity": {"file_name": "identity.json"},
        "flywheel_alpaca": {
            "file_name": "flywheel_alpaca.jsonl",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
        },
    }
    assert lines(folder / "flywheel_alpaca.jsonl") == convert(numbered(QA), "alpaca", SYSTEM)
    assert dataset_info_entry("alpaca", "a.jsonl", system=False) == {
        "file_name": "a.jsonl",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }


def test_llamafactory_dpo_is_sharegpt_ranking(tmp_path):
    from datasets import load_from_disk

    src = write(tmp_path / "pairs.jsonl", PAIRS)
    args = [src, "--to", "dpo", "--system", SYSTEM, "--llamafactory", str(tmp_path / "lf"), "--name", "prefs"]
    result = CliRunner().invoke(format_command, args + ["--dataset", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    assert lines(tmp_path / "lf" / "prefs.jsonl")[0] == {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the return window?"}],
        "chosen": {"role": "assistant", "content": "30 days from delivery."},
        "rejected": {"role": "assistant", "content": "No idea."},
    }
    assert json.loads((tmp_path / "lf" / "dataset_info.json").read_text())["prefs"] == {
        "file_name": "prefs.jsonl",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        },
    }
    assert load_from_disk(str(tmp_path / "ds")).to_list() == convert(numbered(PAIRS), "dpo", SYSTEM)


@pytest.mark.parametrize(
    "target, record, message",
    [
        ("alpaca", {"question": "Hi?"}, "'answer' is missing"),
        ("alpaca", {"answer": "Hello."}, "'question' is missing"),
        ("sharegpt", {"question": "  ", "answer": "Hello."}, "'question' is not a non-empty string"),
        ("sharegpt", {"question": "Hi?", "answer": 42}, "'answer' is not a non-empty string"),
        ("dpo", {"question": "Hi?", "answer": "Hello."}, "'prompt' must be"),
        ("dpo", {"prompt": "Hi?", "chosen": "Hello."}, "'rejected' is missing"),
        ("dpo", {"prompt": [], "chosen": "a", "rejected": "b"}, "'prompt' must be"),
        ("dpo", {"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}, "needs a role"),
        ("dpo", {"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}, "end with a user"),
    ],
)
def test_bad_record_names_its_line(tmp_path, target, record, message):
    good = QA[0] if target != "dpo" else PAIRS[0]
    path = tmp_path / "in.jsonl"
    # a blank line still counts: the bad record is on line 4 in an editor
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n\n" + json.dumps(record) + "\n")
    with pytest.raises(RecordError, match=message) as caught:
        convert(read_jsonl(path), target)
    assert caught.value.line == 4 and str(caught.value).startswith("line 4: ")
    result = CliRunner().invoke(format_command, [str(path), "--to", target, "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "line 4:" in result.output and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    "text, message", [("{not json\n", "line 1: not JSON"), ('["a list"]\n', "line 1: a JSON list, not an object")]
)
def test_unreadable_lines(tmp_path, text, message):
    path = tmp_path / "in.jsonl"
    path.write_text(text)
    with pytest.raises(RecordError, match=message):
        list(read_jsonl(path))


def test_cli_needs_an_output(tmp_path):
    result = CliRunner().invoke(format_command, [write(tmp_path / "qa.jsonl", QA), "--to", "alpaca"])
    assert result.exit_code == 2 and "--out" in result.output
