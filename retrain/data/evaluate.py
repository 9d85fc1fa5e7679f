"""`flywheel data eval`: how good a model is, three ways. Each subcommand prints a rich table and writes to --out DIR
(default <data_dir>/eval) its numbers (<name>.json), per-item results where there are items (<name>.jsonl) and a bar
chart (<name>.png; matplotlib's Agg backend, so no display is needed).

    perplexity MODEL_DIR... --data VALID.jsonl
        Perplexity of local model directories (transformers AutoModelForCausalLM, CPU, float32) on question-answer
        records: exp of the mean negative log-likelihood of the answer tokens only, given the question; the tokens a
        fine-tune learns to produce (what SFT's loss counts), not the question a user wrote. Question and answer are
        rendered with the tokenizer's chat template (the answer's end-of-turn token counts) or, without one, as
        "question\\n" + "answer\\n". The scoring is retrain.gate's Scorer, so the numbers agree with the gate's.
    golden GOLDEN.jsonl
        An endpoint's answers (--url, --model) to golden records, against their reference: exact match after
        text.normalize (case, full width, spaces) and ROUGE-L F (retrain.rouge.rouge_l, Chinese by character).
    winrate QUESTIONS.jsonl --model-a A --model-b B
        Both models answer each question on the endpoint; a judge (--judge-model, on --judge-url if given) compares
        the answers as `flywheel data judge` does, positions swapped. Win rate of A = (A wins + ties / 2) / (wins +
        ties); invalid verdicts and failed requests are counted apart.
Records: {"question", "answer"}; "prompt" (text or chat messages) may stand for "question" and "expected" for "answer",
as in retrain/golden/. winrate needs only the question.

Example:
    flywheel data eval perplexity .flywheel/models/tiny merged/ --data valid.jsonl --out eval/
    flywheel data eval golden retrain/golden/regression.jsonl --model support
    flywheel data eval winrate questions.jsonl --model-a support@v1 --model-b support@v2 --judge-model gpt-4o \\
        --judge-url https://api.openai.com/v1 --judge-api-key "$OPENAI_API_KEY"
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from retrain.data.client import ChatClient, Endpoint, EndpointError, GaveUp, endpoint_options, run_all
from retrain.data.judge import judge_all
from retrain.data.records import RecordError, read_jsonl
from retrain.data.text import normalize
from retrain.dataset import prompt_messages
from retrain.rouge import rouge_l

# For a tokenizer without a chat template: the turns one per line, nothing around them.
PLAIN_TEMPLATE = "{% for message in messages %}{{ message['content'] + '\\n' }}{% endfor %}"

out_option = click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="results folder [default: <data_dir>/eval]"
)


def read_items(path: Path, need_answer: bool = True) -> list[tuple[list[dict], str]]:
    """(chat messages ending with the question, reference answer or "") per record."""
    items = []
    try:
        for line, record in read_jsonl(path):
            prompt = record.get("prompt", record.get("question"))
            answer = record.get("answer", record.get("expected"))
            if not prompt or (need_answer and not (isinstance(answer, str) and answer.strip())):
                needs = "a question and an answer" if need_answer else "a question"
                raise click.ClickException(f"{path}:{line}: a record needs {needs}")
            items.append((list(prompt_messages(prompt)), answer if isinstance(answer, str) else ""))
    except RecordError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    return items


def perplexity(model_dir: Path, items: list[tuple[list[dict], str]], max_length: int = 1024) -> dict:
    """{"perplexity", "nll" (mean per answer token), "answer_tokens", "records"} of a model on the items."""
    from retrain.gate import Scorer
    from retrain.generate import Generator

    generator = Generator(model_dir)
    if not generator.tokenizer.chat_template:
        generator.tokenizer.chat_template = PLAIN_TEMPLATE
    positions = getattr(generator.model.config, "max_position_embeddings", None) or max_length
    scorer = Scorer(generator, max_length=min(max_length, positions))
    total, tokens = 0.0, 0
    for prompt, answer in items:
        logp, count = scorer.logp(None, prompt, answer)
        total, tokens = total + logp, tokens + count
    if not tokens:
        return {"perplexity": None, "nll": None, "answer_tokens": 0, "records": len(items)}
    nll = -total / tokens
    return {"perplexity": math.exp(nll), "nll": nll, "answer_tokens": tokens, "records": len(items)}


def bar_chart(labels: list[str], values: list[float], title: str, ylabel: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(labels) + 2), 4))
    bars = ax.bar(labels, values, color="#4c72b0")
    ax.bar_label(bars, fmt="%.3g")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_results(out: Path | None, name: str, summary: dict, rows: list[dict] | None = None) -> Path:
    """<out>/<name>.json (and .jsonl with rows); returns the folder, made if needed."""
    if out is None:
        from schemas.settings import CommonSettings

        out = CommonSettings().data_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if rows is not None:
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (out / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    return out


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v) for v in row))
    Console().print(table)


@click.command("perplexity")
@click.argument("models", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="JSONL")
@click.option("--max-length", type=click.IntRange(min=8), default=1024, show_default=True, help="tokens per record")
@out_option
def perplexity_command(models: tuple[Path, ...], data: Path, max_length: int, out: Path | None) -> None:
    """Perplexity of each model directory MODELS on the answers of --data (answer tokens only)."""
    items = read_items(data)
    results = [{"model": str(model), **perplexity(model, items, max_length)} for model in models]
    summary = {"data": str(data), "scored": "answer tokens", "models": results}
    folder = write_results(out, "perplexity", summary)
    labels = [Path(r["model"]).name for r in results]
    values = [r["perplexity"] or 0.0 for r in results]
    chart = bar_chart(labels, values, f"perplexity on {data.name}", "perplexity", folder / "perplexity.png")
    columns = ["model", "perplexity", "nll / token", "answer tokens", "records"]
    rows = [[r["model"], r["perplexity"], r["nll"], r["answer_tokens"], r["records"]] for r in results]
    print_table(f"perplexity ({chart})", columns, rows)


async def answer_all(client: ChatClient, asks: list[tuple[str, list[dict]]], max_tokens: int) -> list[str | None]:
    """The answer (temperature 0) to each (model, messages), in order; None where the endpoint kept failing."""
    answers: list[str | None] = [None] * len(asks)

    async def one(index: int) -> None:
        model, messages = asks[index]
        try:
            answers[index] = await client.chat(model, messages, temperature=0.0, max_tokens=max_tokens)
        except GaveUp:
            pass  # left None: counted as failed

    await run_all(range(len(asks)), one, "answers", len(asks))
    return answers


@click.command("golden")
@click.argument("golden", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@endpoint_options
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@out_option
def golden_command(golden: Path, endpoint: Endpoint, max_tokens: int, out: Path | None) -> None:
    """Exact match and ROUGE-L of --model's answers (temperature 0) on the GOLDEN records."""
    items = read_items(golden)

    async def run() -> list[str | None]:
        async with endpoint.client() as client:
            return await answer_all(client, [(endpoint.model, prompt) for prompt, _ in items], max_tokens)

    rows = [
        {"question": prompt[-1]["content"], "reference": reference, "answer": answer}
        | {"exact": normalize(answer) == normalize(reference), "rouge_l": rouge_l(answer, reference)}
        for (prompt, reference), answer in zip(items, _run(run()), strict=True)
        if answer is not None
    ]
    exact = sum(r["exact"] for r in rows) / len(rows) if rows else 0.0
    rouge = sum(r["rouge_l"] for r in rows) / len(rows) if rows else 0.0
    failed = len(items) - len(rows)
    summary = {"model": endpoint.model, "url": endpoint.url, "golden": str(golden), "answered": len(rows)}
    folder = write_results(out, "golden", summary | {"failed": failed, "exact_match": exact, "rouge_l": rouge}, rows)
    title = f"{endpoint.model} on {golden.name}"
    bar_chart(["exact match", "ROUGE-L"], [exact, rouge], title, "score", folder / "golden.png")
    columns = ["model", "answered", "failed", "exact match", "ROUGE-L"]
    print_table(f"golden set {golden.name}", columns, [[endpoint.model, len(rows), failed, exact, rouge]])


@click.command("winrate")
@click.argument("questions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model-a", required=True, help="a model name on --url")
@click.option("--model-b", required=True, help="the model it is compared with")
@endpoint_options(model_flag="--judge-model", model_help="the judge's model name")
@click.option("--judge-url", help="the judge's endpoint [default: --url]")
@click.option("--judge-api-key", help="the judge endpoint's key [default: --api-key]")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@out_option
def winrate_command(
    questions: Path,
    model_a: str,
    model_b: str,
    endpoint: Endpoint,
    judge_url: str | None,
    judge_api_key: str | None,
    max_tokens: int,
    out: Path | None,
) -> None:
    """Win rate of --model-a over --model-b on QUESTIONS, judged by --judge-model both ways round."""
    items = read_items(questions, need_answer=False)
    judge_at = dataclasses.replace(endpoint, url=judge_url or endpoint.url, api_key=judge_api_key or endpoint.api_key)

    async def run():
        async with endpoint.client() as client, judge_at.client() as judge_client:
            asks = [(model, prompt) for prompt, _ in items for model in (model_a, model_b)]
            answers = await answer_all(client, asks, max_tokens)
            both = zip(items, answers[::2], answers[1::2], strict=True)
            pairs = [(prompt[-1]["content"], a, b) for (prompt, _), a, b in both if a is not None and b is not None]
            return await judge_all(judge_client, judge_at.model, pairs, 0.0, max_tokens)

    judgements = _run(run())
    counts = Counter(j.outcome for j in judgements)
    counts["failed"] += len(items) - len(judgements)  # not judged: a model's answer failed
    decided = counts["a"] + counts["b"] + counts["tie"]
    win_rate = (counts["a"] + counts["tie"] / 2) / decided if decided else None
    summary = {"model_a": model_a, "model_b": model_b, "judge": judge_at.model, "questions": len(items)}
    summary |= {"a_wins": counts["a"], "b_wins": counts["b"], "ties": counts["tie"], "invalid": counts["invalid"]}
    summary |= {"failed": counts["failed"], "win_rate_a": win_rate}
    folder = write_results(out, "winrate", summary, [dataclasses.asdict(j) for j in judgements])
    labels = [f"{model_a} wins", f"{model_b} wins", "ties", "invalid", "failed"]
    values = [counts[name] for name in ("a", "b", "tie", "invalid", "failed")]
    title = f"{model_a} vs {model_b}, judged by {judge_at.model}"
    bar_chart(labels, values, title, "questions", folder / "winrate.png")
    print_table("win rate", ["model A", "model B", *labels, "win rate A"], [[model_a, model_b, *values, win_rate]])


def _run(coroutine):
    try:
        return asyncio.run(coroutine)
    except EndpointError as exc:  # RequestRefused: a wrong key, model or URL
        raise click.ClickException(str(exc)) from exc
