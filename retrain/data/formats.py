"""`flywheel data format`: question-answer records (or DPO pairs) -> the shapes training tools read.

Reads JSON lines: {"question", "answer", "source"} records, or {"prompt", "chosen", "rejected"} pairs for
`--to dpo` (the prompt plain text or a list of chat messages). Writes any of: JSON lines (--out), a
`datasets.Dataset` directory (--dataset, `save_to_disk`), and a LLaMA-Factory data folder (--llamafactory:
the data file plus its entry in that folder's `dataset_info.json`, other entries kept).

    flywheel data format qa.jsonl --to alpaca --system "You are Brightleaf's assistant." --out sft.jsonl
    flywheel data format qa.jsonl --to sharegpt --llamafactory LLaMA-Factory/data --name brightleaf
    flywheel data format pairs.jsonl --to dpo --dataset data/dpo --system "Answer briefly."

Shapes (the system parts only with --system, which replaces a system message a DPO prompt already has):
    alpaca    {"instruction": q, "input": "", "output": a, "system": s}
    sharegpt  {"conversations": [{"from": "system", "value": s}, {"from": "human", "value": q},
                                 {"from": "gpt", "value": a}]}
    dpo       {"prompt": [{"role": "system", "content": s}, {"role": "user", "content": p}],
               "chosen": c, "rejected": r}

The LLaMA-Factory descriptions follow its data/README.md: alpaca `columns`; sharegpt `formatting` and `tags`;
preference data `ranking: true`. Its sharegpt preference reader takes chosen and rejected as messages, not
strings, so the LLaMA-Factory file for `--to dpo` holds {"messages": prompt, "chosen": {"role": "assistant",
"content": c}, "rejected": {...}}: the one preference shape that carries multi-turn prompts and a system turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import click

from retrain.data.records import RecordError, read_jsonl, write_jsonl
from retrain.dataset import prompt_messages

FORMATS = ("alpaca", "sharegpt", "dpo")
ROLES = ("system", "user", "assistant")
DATASET_INFO = "dataset_info.json"


def _text(record: dict, field: str, line: int) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        problem = "missing" if value is None else "not a non-empty string"
        raise RecordError(line, f"{field!r} is {problem} (the format needs {field!r})")
    return value


def chat_prompt(record: dict, line: int) -> list[dict]:
    """A pair's prompt as chat messages ending with the user turn its answers reply to."""
    prompt = record.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        prompt = list(prompt_messages(prompt))  # the reading `flywheel train dpo --pairs` does
    if not isinstance(prompt, list) or not prompt:
        raise RecordError(line, "'prompt' must be a non-empty string or a list of chat messages")
    for message in prompt:
        if not (isinstance(message, dict) and message.get("role") in ROLES and isinstance(message.get("content"), str)):
            raise RecordError(line, f"prompt message {message!r} needs a role in {ROLES} and a string content")
    if prompt[-1]["role"] != "user":
        raise RecordError(line, "the prompt must end with a user message (the one chosen/rejected answer)")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def to_alpaca(record: dict, line: int, system: str | None = None) -> dict:
    row = {"instruction": _text(record, "question", line), "input": "", "output": _text(record, "answer", line)}
    return {**row, "system": system} if system else row


def to_sharegpt(record: dict, line: int, system: str | None = None) -> dict:
    turns = [{"from": "human", "value": _text(record, "question", line)}]
    turns.append({"from": "gpt", "value": _text(record, "answer", line)})
    if system:
        turns.insert(0, {"from": "system", "value": system})
    return {"conversations": turns}


def to_dpo(record: dict, line: int, system: str | None = None) -> dict:
    messages = chat_prompt(record, line)
    chosen, rejected = _text(record, "chosen", line), _text(record, "rejected", line)
    if system:
        if messages[0]["role"] == "system":
            messages = messages[1:]
        messages.insert(0, {"role": "system", "content": system})
    return {"prompt": messages, "chosen": chosen, "rejected": rejected}


CONVERTERS = {"alpaca": to_alpaca, "sharegpt": to_sharegpt, "dpo": to_dpo}


def convert(records: Iterable[tuple[int, dict]], target: str, system: str | None = None) -> list[dict]:
    """Every record in the `target` shape; the first one that cannot be raises RecordError with its line."""
    converter = CONVERTERS[target]
    return [converter(record, line, system) for line, record in records]


def llamafactory_row(row: dict, target: str) -> dict:
    """A formatted row as LLaMA-Factory reads it: the same, except DPO answers become assistant messages."""
    if target != "dpo":
        return row
    return {
        "messages": row["prompt"],
        "chosen": {"role": "assistant", "content": row["chosen"]},
        "rejected": {"role": "assistant", "content": row["rejected"]},
    }


def dataset_info_entry(target: str, file_name: str, system: bool) -> dict:
    """The `dataset_info.json` description of a file written by `llamafactory_row`."""
    if target == "alpaca":
        columns = {"prompt": "instruction", "query": "input", "response": "output"}
        return {"file_name": file_name, "columns": columns | ({"system": "system"} if system else {})}
    if target == "sharegpt":
        return {
            "file_name": file_name,
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
    return {
        "file_name": file_name,
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


def write_llamafactory(rows: list[dict], target: str, folder: str | Path, name: str, system: bool) -> Path:
    """`folder/name.jsonl` and its entry in `folder/dataset_info.json`; the file's other datasets are kept."""
    folder = Path(folder)
    file_name = f"{name}.jsonl"
    write_jsonl((llamafactory_row(row, target) for row in rows), folder / file_name)
    info_path = folder / DATASET_INFO
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = dataset_info_entry(target, file_name, system)
    info_path.write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return info_path


def save_dataset(rows: list[dict], folder: str | Path) -> Path:
    from datasets import Dataset  # imported here: pulls in pyarrow and friends (a couple of seconds)

    Dataset.from_list(rows).save_to_disk(str(folder))
    return Path(folder)


@click.command("format")
@click.argument("input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--to", "target", type=click.Choice(FORMATS), required=True, help="the output shape")
@click.option("--system", default=None, help="system prompt (alpaca `system`, sharegpt first turn, dpo first message)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write JSON lines here")
@click.option("--dataset", "dataset_dir", type=click.Path(file_okay=False, path_type=Path), help="save a Dataset here")
@click.option(
    "--llamafactory",
    "llamafactory_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="LLaMA-Factory data folder: write NAME.jsonl and its dataset_info.json entry",
)
@click.option("--name", default=None, help="dataset name for --llamafactory (default: flywheel_<format>)")
def format_command(input_file, target, system, out, dataset_dir, llamafactory_dir, name) -> None:
    """Turn QA records (or DPO pairs, with --to dpo) in INPUT_FILE into a training format."""
    if not (out or dataset_dir or llamafactory_dir):
        raise click.UsageError("give at least one of --out FILE, --dataset DIR, --llamafactory DIR")
    try:
        rows = convert(read_jsonl(input_file), target, system or None)
    except RecordError as e:
        raise click.ClickException(f"{input_file}: {e}") from e
    if not rows:
        raise click.ClickException(f"{input_file}: no records")
    written = []
    if out:
        written.append(str(write_jsonl(rows, out)))
    if dataset_dir:
        written.append(f"{save_dataset(rows, dataset_dir)}/ (datasets)")
    if llamafactory_dir:
        name = name or f"flywheel_{target}"
        info = write_llamafactory(rows, target, llamafactory_dir, name, bool(system))
        written.append(f"{info.parent}/ (LLaMA-Factory dataset {name!r})")
    click.echo(f"{len(rows)} records as {target} -> {', '.join(written)}")


def main() -> None:
    format_command()


if __name__ == "__main__":
    main()
