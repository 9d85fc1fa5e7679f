"""`flywheel data synth`: new question-answer records grown from seed questions by a model behind any
OpenAI-compatible endpoint (retrain/data/client.py: bounded concurrency, retries, a progress bar).

Methods (--method), with prompts in English, or in Chinese when the text has CJK characters (text.has_cjk):
    self-instruct   Self-Instruct (Wang et al., 2023): shown --examples questions (seeds, plus one of its own once it
                    has some), the model writes new ones, round after round, until the output holds --count of them,
                    --rounds rounds (default 10) have passed, or a round adds nothing new.
    evol            Evol-Instruct (WizardLM, Xu et al., 2023): each seed rewritten by one of deepen, broaden,
                    concretize, complexify (--operation, repeatable), --rounds times (default 1), each from the last;
                    a dropped rewrite ends its seed's chain, as Evol-Instruct eliminates failed evolutions.
    paraphrase      --n rewordings of each seed, each asked in a different style.
    back-translate  each seed translated to --pivot and back (default Chinese for English text, English for Chinese).
The model answers each new question (--system: the answers' system message). The record is dropped, and counted, if
it fails `flywheel data filter`'s checks (filters.drop_reason, default FilterConfig) or if its question is a
near-duplicate of a seed or of any question so far: Jaccard >= 0.8 over text.shingles, with dedup.NearDuplicates
(the same LSH bands as `flywheel data dedup`, in an index that grows one question at a time).

Reads --seeds: JSONL records with a "question" (other keys ignored), or plain text, one question per line.
Appends to --out (JSONL) {"id", "question", "answer", "source": "synth:<method>", "seed"}, plus "operation" (evol)
or "pivot" (back-translate). Resumable: `id` hashes method, seed and index (the evol round, the paraphrase number,
the self-instruct question's number in the file); a rerun skips the ids already written and asks again what was
dropped or failed. A last line cut off by a killed run is removed before appending.

Example:
    flywheel data synth --method evol --seeds seeds.txt --out synth.jsonl --rounds 2
    flywheel data synth --method self-instruct --seeds faq.jsonl --out synth.jsonl --count 200 \\
        --url https://api.openai.com/v1 --model gpt-4o-mini --api-key "$OPENAI_API_KEY"
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click
from rich.console import Console

from retrain.data.client import ChatClient, Endpoint, EndpointError, GaveUp, counts_table, endpoint_options, run_all
from retrain.data.dedup import NearDuplicates
from retrain.data.filters import FilterConfig, drop_reason
from retrain.data.text import has_cjk

METHODS = ("self-instruct", "evol", "paraphrase", "back-translate")
OPERATIONS = ("deepen", "broaden", "concretize", "complexify")

# -- prompts: {language: text}; the question or the examples go in the user message --------------------------------

SELF_INSTRUCT = {
    "en": "The user lists example questions that customers of one business asked. Write {n} new questions such "
    "customers could ask: realistic, each on a topic different from the examples and from each other, answerable "
    "by a customer-service assistant. Reply with the questions only, one per line.",
    "zh": "用户列出了某个商家的顾客问过的示例问题。请再写 {n} 个这类顾客可能会问的新问题："
    "要真实，每个问题的主题都与示例和彼此不同，客服助手能够回答。只回复问题本身，每行一个。",
}
EVOL = {
    "en": "Rewrite the user's question {how} Keep it natural, answerable by a customer-service assistant and at "
    "most about 20 words longer. Reply with the rewritten question only.",
    "zh": "改写用户的问题：{how}保持自然，客服助手能够回答，最多增加约 30 个字。只回复改写后的问题。",
}
EVOL_OPERATIONS = {
    "en": {
        "deepen": "so that answering it needs deeper knowledge or reasoning about the same subject.",
        "broaden": "into a new question on a rarer topic of the same domain, of similar length.",
        "concretize": "replacing general words with specific products, numbers, dates or places.",
        "complexify": "adding one more constraint or requirement the answer must meet.",
    },
    "zh": {
        "deepen": "使回答它需要对同一主题更深入的知识或推理。",
        "broaden": "变成同一领域中一个更少见主题的新问题，长度相近。",
        "concretize": "把笼统的说法换成具体的产品、数字、日期或地点。",
        "complexify": "再加一个回答必须满足的条件或要求。",
    },
}
PARAPHRASE = {
    "en": "Paraphrase the user's question {style}. Keep its meaning and every name and number. "
    "Reply with the paraphrase only.",
    "zh": "换一种说法复述用户的问题，{style}。保持原意和所有名称、数字。只回复复述后的问题。",
}
STYLES = {
    "en": ("in plain words", "more formally", "more briefly", "as a hurried customer types", "in a different order"),
    "zh": ("用日常口语", "更正式一些", "更简短一些", "像着急的顾客随手打字那样", "调换各部分的顺序"),
}
TRANSLATE = {
    "en": "Translate the user's message into {language}. Keep its meaning, tone, names and numbers. "
    "Reply with the translation only.",
    "zh": "把用户的消息翻译成{language}，保持原意、语气、名称和数字。只回复译文。",
}
LANGUAGE_IN_CHINESE = {"English": "英文", "Chinese": "中文"}
# Numbering, bullets and labels a model puts before each question of a list
_LIST_MARK = re.compile(r"^\s*(?:[-*•·]|\(?\d{1,3}[.)、:：]|(?:Q|Question|问题)\s*\d*\s*[:：.)])\s*", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:rewritten question|paraphrase|translation|改写后的问题|复述|译文)\s*[:：]\s*", re.I)


def language(text: str) -> str:
    return "zh" if has_cjk(text) else "en"


def stable_id(*parts: str) -> str:
    """16 hex digits of SHA-256 over the parts: the same item has the same id on every run and machine."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def evol_operation(seed: str, round_number: int, operations: tuple[str, ...]) -> str:
    """The operation of a seed's round: a stable choice, so that a rerun asks the same rewrite."""
    return operations[int(stable_id("operation", seed, str(round_number)), 16) % len(operations)]


def parse_questions(text: str) -> list[str]:
    """The questions of a listed reply, without numbering, bullets or quotes; blank lines and repeats dropped."""
    found = (_LIST_MARK.sub("", line).strip().strip("\"'“”「」").strip() for line in text.splitlines())
    return list(dict.fromkeys(q for q in found if q))


def clean_rewrite(text: str) -> str:
    """A single rewritten question: without a leading label ("Paraphrase:") or surrounding quotes."""
    return _LABEL.sub("", text.strip()).strip().strip("\"'“”「」").strip()


def read_seeds(path: Path) -> list[str]:
    """Questions from JSONL records' "question" or from plain lines (a line that is a JSON object is a record)."""
    seeds = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = line.strip()
        if line.startswith("{"):
            try:
                line = str(json.loads(line).get("question") or "").strip()
            except (json.JSONDecodeError, AttributeError):
                raise click.ClickException(f"{path}:{number}: not a JSON object") from None
        if line:
            seeds.append(line)
    return list(dict.fromkeys(seeds))


class OutputFile:
    """The --out JSONL, appended to a record at a time (flushed, so a killed run loses at most the line it wrote)."""

    def __init__(self, path: Path):
        self.records: list[dict] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        with path.open("r+b") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            f.truncate(end)  # a line cut off by a killed run: dropped
        for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
            try:
                self.records += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError:
                raise click.ClickException(f"{path}:{number}: not JSON; not appending to it") from None
        self.ids = {r.get("id") for r in self.records}
        self._file = path.open("a", encoding="utf-8")

    def append(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.records.append(record)
        self.ids.add(record["id"])

    def close(self) -> None:
        self._file.close()


@dataclass
class Synth:
    """One run: asks the model, drops what is not new or not good, appends the rest, counts every outcome."""

    client: ChatClient
    model: str
    method: str
    out: OutputFile
    seen: NearDuplicates
    system: str | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    filters: FilterConfig = field(default_factory=FilterConfig)
    counts: Counter = field(default_factory=Counter)
    number: int = 0  # self-instruct: the next question's number in the output

    async def ask(self, system: str | None, user: str) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return await self.client.chat(self.model, messages, temperature=self.temperature, max_tokens=self.max_tokens)

    async def keep(self, record_id: str | None, seed: str, question: str, **extra) -> bool:
        """Answer `question` and append the record, unless it is a near-duplicate or fails the filters (`record_id`
        None: self-instruct's, numbered when written)."""
        # indexed before the answer is awaited: a concurrent task with a near-same question is then the duplicate
        if not self.seen.add(question):
            self.counts["duplicate"] += 1
            return False
        answer = await self.ask(self.system, question)
        reason = drop_reason({"question": question, "answer": answer}, self.filters)
        if reason is not None:
            self.counts[reason] += 1
            return False
        if record_id is None:
            record_id = stable_id(self.method, seed, str(self.number))
            self.number += 1
        record = {"id": record_id, "question": question, "answer": answer, "source": f"synth:{self.method}"}
        self.out.append({**record, "seed": seed, **extra})
        self.counts["written"] += 1
        return True

    def done(self, record_id: str) -> bool:
        self.counts["skipped"] += record_id in self.out.ids
        return record_id in self.out.ids

    async def each(self, items: list, work, description: str) -> None:
        """`work(item)` for every item; an endpoint that keeps failing costs only that item (a rerun asks again)."""

        async def guarded(item) -> None:
            try:
                await work(item)
            except GaveUp:
                self.counts["failed"] += 1

        await run_all(items, guarded, description, len(items))


async def self_instruct(synth: Synth, seeds: list[str], count: int, rounds: int, per_request: int, examples: int):
    made = [r["question"] for r in synth.out.records if r.get("source") == "synth:self-instruct"]
    synth.number = len(made)
    answering = 0  # questions being answered: with `made`, what counts against --count

    async def one(pool: list[str], round_number: int, request: int) -> None:
        nonlocal answering
        # Self-Instruct shows mostly human seeds and some of the model's own questions: the seeds keep the style
        # anchored, the model's own push it towards topics the seeds do not cover.
        rng = random.Random(stable_id("self-instruct", str(len(pool)), str(round_number), str(request)))
        shown = rng.sample(seeds, min(len(seeds), examples - 1 if pool else examples))
        shown += [rng.choice(pool)] if pool else []
        listing = "\n".join(f"{i}. {q}" for i, q in enumerate(shown, start=1))
        reply = await synth.ask(SELF_INSTRUCT[language(shown[0])].format(n=per_request), listing)
        for question in parse_questions(reply)[:per_request]:
            if len(made) + answering >= count:
                return
            answering += 1
            try:
                if await synth.keep(None, shown[0], question):
                    made.append(question)
            finally:
                answering -= 1

    for round_number in range(rounds):
        if len(made) >= count:
            return
        pool = list(made)  # what this round's requests sample from, the same for all of them
        requests = math.ceil((count - len(made)) / per_request)
        work = functools.partial(one, pool, round_number)
        await synth.each(list(range(requests)), work, f"self-instruct round {round_number + 1}")
        if len(made) == len(pool):  # nothing new this round: the model only repeats itself now
            return


async def evol(synth: Synth, seeds: list[str], rounds: int, operations: tuple[str, ...]) -> None:
    done = {r.get("id"): r for r in synth.out.records}

    async def one(seed: str) -> None:
        question = seed
        for round_number in range(rounds):
            record_id = stable_id("evol", seed, str(round_number))
            if synth.done(record_id):
                question = done[record_id]["question"]
                continue
            operation, lang = evol_operation(seed, round_number, operations), language(question)
            prompt = EVOL[lang].format(how=EVOL_OPERATIONS[lang][operation])
            rewritten = clean_rewrite(await synth.ask(prompt, question))
            if not await synth.keep(record_id, seed, rewritten, operation=operation):
                return
            question = rewritten

    await synth.each(seeds, one, "evol")


async def paraphrase(synth: Synth, seeds: list[str], n: int) -> None:
    async def one(item: tuple[str, int]) -> None:
        seed, index = item
        record_id = stable_id("paraphrase", seed, str(index))
        if synth.done(record_id):
            return
        lang = language(seed)
        system = PARAPHRASE[lang].format(style=STYLES[lang][index % len(STYLES[lang])])
        await synth.keep(record_id, seed, clean_rewrite(await synth.ask(system, seed)))

    items = [(seed, index) for seed in seeds for index in range(n)]
    await synth.each(items, one, "paraphrase")


async def back_translate(synth: Synth, seeds: list[str], pivot: str | None) -> None:
    def instruction(text: str, target: str) -> str:
        lang = language(text)
        return TRANSLATE[lang].format(language=LANGUAGE_IN_CHINESE.get(target, target) if lang == "zh" else target)

    async def one(seed: str) -> None:
        record_id = stable_id("back-translate", seed, "0")
        if synth.done(record_id):
            return
        target = pivot or ("English" if has_cjk(seed) else "Chinese")
        source = "Chinese" if has_cjk(seed) else "English"
        middle = clean_rewrite(await synth.ask(instruction(seed, target), seed))
        back = clean_rewrite(await synth.ask(instruction(middle, source), middle))
        await synth.keep(record_id, seed, back, pivot=target)

    await synth.each(seeds, one, "back-translate")


@click.command("synth")
@click.option("--method", type=click.Choice(METHODS), required=True)
@click.option("--seeds", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSONL, appended to")
@endpoint_options
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True, help="self-instruct: questions")
@click.option("--rounds", type=click.IntRange(min=1), help="self-instruct: most rounds (10); evol: rewrites (1)")
@click.option("--per-request", type=click.IntRange(min=1), default=5, show_default=True, help="self-instruct")
@click.option("--examples", type=click.IntRange(min=1), default=4, show_default=True, help="self-instruct: shown")
@click.option("--operation", "operations", type=click.Choice(OPERATIONS), multiple=True, help="evol [default: all]")
@click.option("--n", "n", type=click.IntRange(min=1), default=3, show_default=True, help="paraphrase: per seed")
@click.option("--pivot", help="back-translate: pivot language [default: Chinese, or English for Chinese text]")
@click.option("--system", help="system message for the answers")
@click.option("--temperature", type=click.FloatRange(0, 2), default=0.7, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
def synth_command(
    method, seeds, out, endpoint: Endpoint, count, rounds, per_request, examples, operations, n, pivot, system,
    temperature, max_tokens,
) -> None:  # fmt: skip
    """Write new question-answer records grown from the seed questions with --method (appends to --out)."""
    questions = read_seeds(seeds)
    if not questions:
        raise click.ClickException(f"{seeds}: no seed questions")
    output = OutputFile(out)
    seen = NearDuplicates(questions + [r.get("question") or "" for r in output.records])

    async def run() -> Synth:
        async with endpoint.client() as client:
            synth = Synth(client, endpoint.model, method, output, seen, system, temperature, max_tokens)
            await {
                "self-instruct": lambda: self_instruct(synth, questions, count, rounds or 10, per_request, examples),
                "evol": lambda: evol(synth, questions, rounds or 1, operations or OPERATIONS),
                "paraphrase": lambda: paraphrase(synth, questions, n),
                "back-translate": lambda: back_translate(synth, questions, pivot),
            }[method]()
            return synth

    try:
        synth = asyncio.run(run())
    except EndpointError as exc:  # RequestRefused: a wrong key, model or URL; the records so far stay
        raise click.ClickException(str(exc)) from exc
    finally:
        output.close()
    counts = synth.counts
    dropped = sorted(name for name in counts if name not in ("written", "skipped", "duplicate", "failed"))
    rows = [(name, counts[name]) for name in ("written", "skipped", "duplicate")]
    rows += [(f"dropped: {name}", counts[name]) for name in dropped] + [("failed", counts["failed"])]
    Console().print(counts_table(f"flywheel data synth -> {out}", rows, synth.client))
    if synth.counts["failed"]:
        raise click.ClickException(f"{synth.counts['failed']} item(s) failed; run the command again to retry them")


def main() -> None:
    synth_command()


if __name__ == "__main__":
    main()
