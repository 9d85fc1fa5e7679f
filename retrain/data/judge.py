"""`flywheel data judge`: preference pairs from two answers to the same questions, judged by a model (LLM-as-a-judge)
on any OpenAI-compatible endpoint (retrain/data/client.py: bounded concurrency, retries, a progress bar).

Reads INPUT, JSONL of {"question", "answer_a", "answer_b"}, or --answers-a and --answers-b, two JSONL files of
{"question", "answer"} matched by question (a question in only one of them is counted as unmatched).

Each item is judged twice, the second time with the answers' places swapped, because judges favour a position
(Zheng et al., 2023, "Judging LLM-as-a-judge with MT-Bench"). When both verdicts name the same answer it becomes a
pair, chosen (that answer) and rejected (the other), with both reasons; anything else (the verdicts disagree, or one
says tie) is a tie, dropped and counted. A reply without a readable verdict is counted as invalid, an item whose
endpoint kept failing as failed, and two identical answers are a tie without asking. The judge is asked for a JSON
object {"winner": "A"|"B"|"tie", "reason": ...}; `parse_verdict` finds it in whatever text surrounds it (a preamble,
a code fence) and else reads `winner: A` or MT-Bench's `[[A]]`. The prompt is in Chinese when the question is.

Writes --out (JSONL, rewritten): {"id", "prompt": [the user question], "question", "chosen", "rejected", "winner"
("a" or "b"), "reason", "reason_swapped", "judge"}, which `flywheel data format --to dpo` reads. --publish also sends
each pair to dpo.pairs (FLYWHEEL_KAFKA_BOOTSTRAP) as a DPOPair with source "judge", where the retrain trigger counts
it as it counts users' corrections. The ids are stable: the pair id is retrain.dataset.content_pair_id (a hash of
prompt, chosen and rejected, what `flywheel train dpo` gives a pair without one), and the event, feedback and message
ids derive from it, so a pair judged and published twice is stored once.

Example:
    flywheel data judge answers.jsonl --out pairs.jsonl --url https://api.openai.com/v1 --model gpt-4o --api-key "$K"
    flywheel data judge --answers-a base.jsonl --answers-b tuned.jsonl --out pairs.jsonl --publish --version support@v3
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console

from retrain.data.client import ChatClient, Endpoint, EndpointError, GaveUp, counts_table, endpoint_options, run_all
from retrain.data.records import RecordError, read_jsonl
from retrain.data.text import has_cjk, normalize
from retrain.dataset import content_pair_id

PRODUCER = "flywheel-judge"
# Namespace of the judge's event ids. Not streams.pairing.PAIR_NAMESPACE: retrain may not import streams
# (tests/unit/test_imports.py), and the ids only need to be stable, not to match the stream processors'.
JUDGE_NAMESPACE = uuid.UUID("c91eba08-6c45-4185-b134-1f580d3ae445")
OUTCOMES = ("a", "b", "tie", "invalid", "failed")
Item = tuple[str, str, str]  # question, answer_a, answer_b

JUDGE = {
    "en": "You are an impartial judge of a customer-service assistant's answers. Compare the two answers to the "
    "question for helpfulness, correctness, relevance and clarity; do not let their order or their length sway you. "
    'Reply with a JSON object only: {"winner": "A" or "B" or "tie", "reason": "<one sentence>"}.',
    "zh": "你是客服助手回答的公正评审。请从有用性、正确性、相关性和清晰度比较两个回答，不要受回答的顺序或长短影响。"
    '只回复一个 JSON 对象：{"winner": "A" 或 "B" 或 "tie", "reason": "<一句话理由>"}。',
}
ASK = "[Question]\n{question}\n\n[Answer A]\n{first}\n[End of answer A]\n\n[Answer B]\n{second}\n[End of answer B]"
WINNERS = {"a": "A", "b": "B", "tie": "tie", "draw": "tie", "equal": "tie", "c": "tie", "平局": "tie", "平手": "tie"}
_WINNER_TEXT = re.compile(r"""winner["']?\s*[:：=]\s*["']?\s*(A|B|tie|draw)\b""", re.IGNORECASE)
_BRACKETS = re.compile(r"\[\[(A|B|C|tie)\]\]", re.IGNORECASE)


@dataclass(frozen=True)
class Verdict:
    winner: str | None  # "A", "B" or "tie"; None: no verdict could be read
    reason: str = ""


@dataclass(frozen=True)
class Judgement:
    question: str
    answer_a: str
    answer_b: str
    outcome: str  # one of OUTCOMES: "a" or "b" (that answer won both times), "tie", "invalid", "failed"
    reason: str = ""  # of the first verdict, where answer_a was shown as A
    reason_swapped: str = ""  # of the second, where answer_b was shown as A


def judge_messages(question: str, first: str, second: str) -> list[dict]:
    """The judge's prompt with `first` shown as answer A and `second` as answer B."""
    system = JUDGE["zh" if has_cjk(question) else "en"]
    user = ASK.format(question=question, first=first, second=second)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _winner(value) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip().strip("\"'[]").lower()
    return WINNERS.get(value.removeprefix("answer").removeprefix("回答").strip())


def parse_verdict(text: str) -> Verdict:
    """The verdict in a judge's reply: the first JSON object with a "winner" anywhere in it (nested ones too), else
    `winner: X` or [[X]] in the text (the reason is then the text itself)."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            found, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(found, dict) and "winner" in found:
            reason = found.get("reason")
            reason = reason if isinstance(reason, str) else "" if reason is None else json.dumps(reason)
            return Verdict(_winner(found["winner"]), reason)
    match = _WINNER_TEXT.search(text) or _BRACKETS.search(text)
    return Verdict(_winner(match.group(1)) if match else None, text.strip()[:1000])


def combine(first: str | None, swapped: str | None) -> str:
    """The outcome of two verdicts: `first` with answer_a shown as A, `swapped` with answer_b shown as A.

    "a" or "b" when both name the same answer; "tie" when they disagree or either is a tie; "invalid" when either
    could not be read."""
    if first is None or swapped is None:
        return "invalid"
    by_first = {"A": "a", "B": "b"}.get(first, "tie")
    by_swapped = {"A": "b", "B": "a"}.get(swapped, "tie")
    return by_first if by_first == by_swapped else "tie"


async def judge(
    client: ChatClient, model: str, question: str, answer_a: str, answer_b: str, temperature: float, max_tokens: int
) -> Judgement:
    """Both verdicts on one item, the positions swapped between them. Raises GaveUp or RequestRefused."""
    if normalize(answer_a) == normalize(answer_b):
        return Judgement(question, answer_a, answer_b, "tie", "identical answers", "identical answers")
    options = {"temperature": temperature, "max_tokens": max_tokens}
    first = parse_verdict(await client.chat(model, judge_messages(question, answer_a, answer_b), **options))
    swapped = parse_verdict(await client.chat(model, judge_messages(question, answer_b, answer_a), **options))
    return Judgement(question, answer_a, answer_b, combine(first.winner, swapped.winner), first.reason, swapped.reason)


async def judge_all(
    client: ChatClient, model: str, items: Sequence[Item], temperature: float = 0.0, max_tokens: int = 512
) -> list[Judgement]:
    """A judgement per (question, answer_a, answer_b), in order; an item whose endpoint kept failing is "failed"."""
    results: list[Judgement | None] = [None] * len(items)

    async def one(index: int) -> None:
        question, answer_a, answer_b = items[index]
        try:
            results[index] = await judge(client, model, question, answer_a, answer_b, temperature, max_tokens)
        except GaveUp as exc:
            results[index] = Judgement(question, answer_a, answer_b, "failed", str(exc))

    await run_all(range(len(items)), one, "judge", len(items))
    return [r for r in results if r is not None]


def pair_record(judgement: Judgement, judge_model: str) -> dict | None:
    """The preference pair of a judgement that has a winner (None for the others)."""
    if judgement.outcome not in ("a", "b"):
        return None
    chosen, rejected = (judgement.answer_a, judgement.answer_b)[:: 1 if judgement.outcome == "a" else -1]
    prompt = [{"role": "user", "content": judgement.question}]
    return {
        "id": content_pair_id(prompt, chosen, rejected),
        "prompt": prompt,
        "question": judgement.question,
        "chosen": chosen,
        "rejected": rejected,
        "winner": judgement.outcome,
        "reason": judgement.reason,
        "reason_swapped": judgement.reason_swapped,
        "judge": judge_model,
    }


def pair_event(record: dict, base_model: str, model_version: str):
    """The DPOPair event of a pair record: source "judge", every id derived from the pair id."""
    from schemas.events import ChatMessage, DPOPair

    pair_id = record["id"]
    return DPOPair(
        event_id=uuid.uuid5(JUDGE_NAMESPACE, f"{pair_id}|{base_model}|{model_version}"),
        producer=PRODUCER,
        pair_id=pair_id,
        base_model=base_model,
        model_version=model_version,
        prompt=[ChatMessage(role="user", content=record["question"])],
        chosen=record["chosen"],
        rejected=record["rejected"],
        source="judge",
        session_id="judge",
        message_id=f"judge-{pair_id}",
        feedback_event_id=uuid.uuid5(JUDGE_NAMESPACE, pair_id),
    )


def publish_pairs(events: list) -> None:
    """Send the events to their topic (dpo.pairs) and wait until the broker has them all."""
    from producers.sdk import ChatEventProducer
    from producers.settings import ProducerSettings

    producer = ChatEventProducer(ProducerSettings())
    try:
        for event in events:
            producer.send(event)
        stats = producer.flush(30)
        if stats.pending or stats.failed:
            raise click.ClickException("some pairs were not delivered to the broker; run the command again")
    finally:
        producer.close(strict=False)


def _text(record: dict, key: str, path: Path, line: int) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise click.ClickException(f"{path}:{line}: {key!r} missing or not a non-empty string")
    return value


def read_items(input_file: Path | None, answers_a: Path | None, answers_b: Path | None) -> tuple[list[Item], int]:
    """((question, answer_a, answer_b) items, questions found in only one answers file)."""
    try:
        if input_file is not None:
            fields = ("question", "answer_a", "answer_b")
            items = [tuple(_text(r, k, input_file, n) for k in fields) for n, r in read_jsonl(input_file)]
            return items, 0
        by_question = []
        for path in (answers_a, answers_b):
            answers: dict[str, str] = {}
            for n, r in read_jsonl(path):
                answers.setdefault(_text(r, "question", path, n).strip(), _text(r, "answer", path, n))
            by_question.append(answers)
    except RecordError as exc:
        raise click.ClickException(str(exc)) from None
    first, second = by_question
    items = [(question, answer, second[question]) for question, answer in first.items() if question in second]
    return items, len(first.keys() ^ second.keys())


@click.command("judge")
@click.argument("input_file", metavar="[INPUT]", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--answers-a", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="instead of INPUT")
@click.option("--answers-b", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="instead of INPUT")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="pairs (JSONL)")
@endpoint_options(model_help="the judge's model name")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--publish", is_flag=True, help="also send the pairs to dpo.pairs as DPOPair events")
@click.option("--base-model", help="the pairs' base model [default: FLYWHEEL_SERVED_MODEL_NAME]")
@click.option("--version", "model_version", help="the version that answered [default: the base model]")
def judge_command(
    input_file: Path | None,
    answers_a: Path | None,
    answers_b: Path | None,
    out: Path,
    endpoint: Endpoint,
    temperature: float,
    max_tokens: int,
    publish: bool,
    base_model: str | None,
    model_version: str | None,
) -> None:
    """Judge two answers per question with --model, both ways round; write the agreed preferences to --out."""
    both, either = None not in (answers_a, answers_b), (answers_a, answers_b) != (None, None)
    if (input_file is None) != both or (either and not both):
        raise click.UsageError("give INPUT, or both --answers-a and --answers-b")
    items, unmatched = read_items(input_file, answers_a, answers_b)

    async def run() -> tuple[list[Judgement], ChatClient]:
        async with endpoint.client() as client:
            return await judge_all(client, endpoint.model, items, temperature, max_tokens), client

    try:
        judgements, client = asyncio.run(run())
    except EndpointError as exc:  # RequestRefused: a wrong key, model or URL
        raise click.ClickException(str(exc)) from exc
    records = [r for r in (pair_record(j, endpoint.model) for j in judgements) if r is not None]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    counts = Counter(j.outcome for j in judgements)
    rows = [("pairs", len(records)), *((name, counts[name]) for name in OUTCOMES[2:]), ("unmatched", unmatched)]
    Console().print(counts_table(f"flywheel data judge -> {out}", rows, client))
    if publish and records:
        from schemas.settings import CommonSettings

        base_model = base_model or CommonSettings().served_model_name
        publish_events = [pair_event(r, base_model, model_version or base_model) for r in records]
        publish_pairs(publish_events)
        click.echo(f"published {len(publish_events)} pair(s) to dpo.pairs")


def main() -> None:
    judge_command()


if __name__ == "__main__":
    main()
