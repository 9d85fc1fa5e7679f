"""Knowledge-base retrieval (inference/retrieval): hybrid search against dense-only and BM25-only, same data, same run.

(a) Quality on the bundled shop knowledge base (examples/shop: 8 policy pages in English, 8 in Chinese) and its
    labelled questions (examples/shop_questions.jsonl: every paraphrase of the shop's sft intents, labelled with the
    page holding the fact). recall@5: share of questions whose page is among the pages of the 5 best passages;
    MRR@10: mean of 1 / rank of the first passage of that page among the 10 best, 0 when absent. Per mode, overall
    and per language.
(b) Latency at --passages passages (10,000): the shop's pages plus synthetic filler pages, written as Markdown files
    and added like any others. Filler sentences are the words of two random shop sentences of one language, mixed
    and cut to a random length: the shop's vocabulary (and so BM25's and the embedder's near misses) without its
    facts; 3 pages in 4 are English. Each labelled question is searched in each mode; p50 and p99 per repeat, the
    median over --repeats. A dense search includes embedding the question; a Chinese question in hybrid mode is
    ranked by BM25 alone (the embedder reads English only), so its hybrid latency is BM25's.
    Quality is measured again there, the filler pages acting as distractors: a stress test rather than a forecast,
    since word salad of the shop's own vocabulary resembles the questions more than unrelated real pages would.
(c) Build: adding all pages to an empty knowledge base (read, split, tokenize, embed, write, index), with the
    embedding rate; loading it in a second instance (`refresh`, as the gateway does); updating one page (only its
    passages are embedded again); a `refresh` that finds nothing new. The model is loaded before the clock starts.
(d) What a rag answer adds at the gateway: two gateways on one broker and Redis, in front of the same upstream stub
    (bench.upstream_stub, a constant answer), one plain, one marking the alias rag on the large knowledge base.
    --requests sequential chat completions per gateway, alternating, the labelled questions in turn, after a
    warm-up; p50 and p99 of each, and the difference of the medians: the lookup in the gateway's retrieval
    process, the longer prompt and the sources in the answer and its events. --skip-gateway leaves it out.

    python -m bench.retrieval                       # 10,000 passages, 3 repeats: about 5 minutes on 2 cores
    python -m bench.retrieval --small --out retrieval.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from inference.retrieval import KnowledgeBase
from inference.retrieval.examples import SHOP_DIR, load_labelled_questions
from inference.retrieval.kb import MODES
from inference.retrieval.settings import RetrievalSettings

SHOP = SHOP_DIR
PASSAGES_PER_FILLER_PAGE = 5
_SENTENCE = re.compile(r"(?<=[.!?。！？])\s*")


# -- metrics --------------------------------------------------------------------------------------------------


def recall_at(documents: Sequence[str], label: str, n: int = 5) -> float:
    """1 when `label` is among the first `n` ranked passages' documents, else 0."""
    return float(label in documents[:n])


def reciprocal_rank(documents: Sequence[str], label: str, n: int = 10) -> float:
    """1 / the rank of the first passage of `label` among the first `n`; 0 when absent."""
    top = list(documents[:n])
    return 1.0 / (top.index(label) + 1) if label in top else 0.0


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def quality(kb: KnowledgeBase, questions: list[dict]) -> dict:
    """{mode: {"all"|"en"|"zh": {"recall@5", "mrr@10", "n"}}}."""
    out: dict = {}
    for mode in MODES:
        found: dict[str, list[tuple[float, float]]] = {"all": [], "en": [], "zh": []}
        for q in questions:
            documents = [hit.document for hit in kb.search(q["question"], k=10, mode=mode)]
            pair = (recall_at(documents, q["document"]), reciprocal_rank(documents, q["document"]))
            found["all"].append(pair)
            found[q["lang"]].append(pair)
        out[mode] = {
            group: {"recall@5": statistics.fmean(r for r, _ in pairs), "mrr@10": statistics.fmean(m for _, m in pairs)}
            | {"n": len(pairs)}
            for group, pairs in found.items()
        }
    return out


# -- synthetic filler -------------------------------------------------------------------------------------------


def shop_sentences() -> dict[str, list[list[str]]]:
    """The words of each sentence of the shop's pages, per language ("en", "zh"); headings left out."""
    import jieba

    jieba.setLogLevel(60)
    out: dict[str, list[list[str]]] = {"en": [], "zh": []}
    for lang in out:
        for page in sorted((SHOP / lang).glob("*.md")):
            for line in page.read_text(encoding="utf-8").split("\n\n"):
                if line.startswith("#"):
                    continue
                for sentence in _SENTENCE.split(" ".join(line.split())):
                    words = jieba.lcut(sentence) if lang == "zh" else sentence.split()
                    if len(words) > 3:
                        out[lang].append(words)
    return out


def filler_paragraph(rng: random.Random, sentences: list[list[str]], lang: str, size: int) -> str:
    """About `size` characters of sentences, each the mixed words of two shop sentences."""
    joiner = "" if lang == "zh" else " "
    stop = "。" if lang == "zh" else "."
    parts: list[str] = []
    length = 0
    while length < size:
        words = rng.choice(sentences) + rng.choice(sentences)
        rng.shuffle(words)
        sentence = joiner.join(words[: rng.randint(6, max(7, len(words) - 2))]).strip(" .。") + stop
        if lang == "en":
            sentence = sentence[0].upper() + sentence[1:]
        parts.append(sentence)
        length += len(sentence) + len(joiner)
    return joiner.join(parts)


def write_filler(root: Path, pages: int, chunk_size: int, seed: int) -> None:
    """`pages` Markdown pages under root/filler/<lang>/, each of PASSAGES_PER_FILLER_PAGE paragraphs of a passage."""
    rng = random.Random(seed)
    sentences = shop_sentences()
    for n in range(pages):
        lang = "zh" if n % 4 == 3 else "en"
        title = filler_paragraph(rng, sentences[lang], lang, 1)[:40].rstrip(" .。")
        # A paragraph of about 70% of the size: two never fit one passage, and one (its last sentence running over)
        # rarely needs two.
        body = [
            filler_paragraph(rng, sentences[lang], lang, int(chunk_size * 0.7)) for _ in range(PASSAGES_PER_FILLER_PAGE)
        ]
        page = root / "filler" / lang / f"page-{n:05d}.md"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"# {title}\n\n" + "\n\n".join(body) + "\n", encoding="utf-8")


# -- the bench ----------------------------------------------------------------------------------------------


def latency(kb: KnowledgeBase, questions: list[dict], repeats: int) -> dict:
    """{mode: {"p50_ms", "p99_ms", "p50_ms_en", ...}}: per repeat, then the median over repeats."""
    runs: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    for _ in range(repeats):
        for mode in MODES:
            seconds: dict[str, list[float]] = {"all": [], "en": [], "zh": []}
            for q in questions:
                t = time.perf_counter()
                kb.search(q["question"], k=10, mode=mode)
                elapsed = time.perf_counter() - t
                seconds["all"].append(elapsed)
                seconds[q["lang"]].append(elapsed)
            for group, values in seconds.items():
                suffix = "" if group == "all" else f"_{group}"
                runs[mode].setdefault(f"p50_ms{suffix}", []).append(percentile_ms(values, 50))
                runs[mode].setdefault(f"p99_ms{suffix}", []).append(percentile_ms(values, 99))
    return {mode: {name: statistics.median(v) for name, v in found.items()} for mode, found in runs.items()}


def build(work: Path, settings: RetrievalSettings, console: Console) -> dict:
    """Time the build of the whole knowledge base in `work`/kb from `work`/shop, filler pages included."""
    kb = KnowledgeBase(work / "kb", settings)
    marks: list[tuple[float, int]] = []

    def embedded(done: int, total: int) -> None:
        marks.append((time.perf_counter(), done))
        if done == total or done % 1000 < 32:
            console.print(f"  embedded {done:,} / {total:,} passages")

    t = time.perf_counter()
    kb.add([work / "shop"], progress=embedded)  # ids as in the shop KB: en/returns.md, filler/en/page-00001.md
    add_s = time.perf_counter() - t
    (t0, n0), (t1, n1) = marks[0], marks[-1]
    figures = {
        "passages": len(kb._snapshot.generation.passages),
        "documents": len(kb.documents()),
        "add_s": add_s,
        "embed_rate_per_s": (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan"),
    }
    reader = KnowledgeBase(work / "kb", settings)
    t = time.perf_counter()
    reader.refresh()
    figures["load_s"] = time.perf_counter() - t
    page = work / "shop" / "en" / "returns.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nReturn labels are emailed within one hour.\n", "utf-8")
    t = time.perf_counter()
    [info] = kb.update([page], root=work / "shop")
    figures["update_one_s"] = time.perf_counter() - t
    figures["update_one_passages"] = len(info.passages)
    t = time.perf_counter()
    reader.refresh()
    figures["reload_s"] = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(1000):
        reader.refresh()
    figures["refresh_unchanged_us"] = (time.perf_counter() - t) * 1000
    return figures


def gateway_latency(kb_dir: Path, questions: list[dict], requests: int, work: Path, console: Console) -> dict:
    """(d): {"plain"|"rag": {"p50_ms", "p99_ms"}, "added_p50_ms", "requests", "sources"}."""
    import httpx

    from bench.gateway_procs import spawn, start_gateway, wait_http
    from deploy import stack as local_stack
    from deploy.ports import free_ports
    from schemas.settings import CommonSettings

    logs = work / "logs"
    logs.mkdir(parents=True)
    kafka, redis_port, store, stub_port = free_ports(4)
    settings = CommonSettings(
        data_dir=work / "stack",
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        clickhouse_dsn="",
        clickhouse_http_port=store,
    )
    console.print("(d) starting broker, Redis, the upstream stub and two gateways")
    local_stack.up(settings, infra_only=True, timeout=90.0)
    procs = []
    try:
        stub_url = f"http://127.0.0.1:{stub_port}"
        procs.append(spawn("stub", [sys.executable, "-m", "bench.upstream_stub", "--port", str(stub_port)], logs))
        wait_http(procs[-1], stub_url + "/health")
        gateways = {}
        for label, extra in (
            ("plain", {}),
            ("rag", {"FLYWHEEL_GATEWAY_RAG_ALIASES": "support", "FLYWHEEL_KB_DIR": str(kb_dir)}),
        ):
            proc, url, key = start_gateway(label, settings, work, logs, stub_url, extra=extra)
            procs.append(proc)
            gateways[label] = (url, {"Authorization": f"Bearer {key}"})
        warmup = 20
        seconds: dict[str, list[float]] = {label: [] for label in gateways}
        sources: list[int] = []
        with httpx.Client(timeout=30.0) as client:
            for i in range(warmup + requests):
                body = {
                    "model": "support",
                    "messages": [{"role": "user", "content": questions[i % len(questions)]["question"]}],
                }
                for label, (url, headers) in gateways.items():
                    t = time.perf_counter()
                    response = client.post(
                        url + "/v1/chat/completions", json={**body, "max_tokens": 16}, headers=headers
                    )
                    elapsed = time.perf_counter() - t
                    response.raise_for_status()
                    if i >= warmup:
                        seconds[label].append(elapsed)
                        if label == "rag":
                            sources.append(len(response.json().get("sources") or []))
    finally:
        for proc in reversed(procs):
            proc.stop()
        local_stack.down(settings)
    out: dict = {
        label: {"p50_ms": percentile_ms(v, 50), "p99_ms": percentile_ms(v, 99)} for label, v in seconds.items()
    }
    out["added_p50_ms"] = out["rag"]["p50_ms"] - out["plain"]["p50_ms"]
    out["requests"] = requests
    out["with_sources"] = sum(1 for n in sources if n) / len(sources)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=10_000, help="passages of the large knowledge base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="1,000 passages, 1 repeat (a test run)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300, help="(d) chat completions per gateway")
    parser.add_argument("--skip-gateway", action="store_true", help="leave out (d)")
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.small:
        args.passages, args.repeats, args.requests = 1000, 1, 60
    console = Console(stderr=True)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    questions = load_labelled_questions()
    figures: dict = {"questions": len(questions), "repeats": args.repeats}

    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        work = Path(tmp)
        settings = RetrievalSettings(kb_dir=work / "kb", kb_reranker_model=None)
        t = time.perf_counter()
        from inference.retrieval import models

        models.embedder(settings.embedding_model_dir)
        figures["model_load_s"] = time.perf_counter() - t

        console.print("(a) quality on the shop knowledge base")
        shop = KnowledgeBase(work / "shop-kb", settings)
        shop.add([SHOP])
        figures["shop_passages"] = len(shop._snapshot.generation.passages)
        figures["quality_shop"] = quality(shop, questions)

        console.print(f"(b, c) a knowledge base of about {args.passages:,} passages")
        shutil.copytree(SHOP, work / "shop")  # a copy: the update in `build` changes one of its pages
        filler_pages = max(0, (args.passages - figures["shop_passages"]) // PASSAGES_PER_FILLER_PAGE)
        write_filler(work / "shop", filler_pages, settings.kb_chunk_size, args.seed)
        figures["build"] = build(work, settings, console)
        large = KnowledgeBase.open(work / "kb", settings)
        figures["latency"] = latency(large, questions, args.repeats)
        figures["quality_large"] = quality(large, questions)
        if not args.skip_gateway:
            figures["gateway"] = gateway_latency(work / "kb", questions, args.requests, work / "gateway", console)
    _print(figures)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _print(figures: dict) -> None:
    b = figures["build"]
    table = Table(
        title=f"retrieval bench: {figures['questions']} labelled questions, latency median of {figures['repeats']}",
        caption=f"shop: the bundled knowledge base ({figures['shop_passages']} passages); "
        f"mixed: with shop-vocabulary word salad ({b['passages']:,} passages in all)",
    )
    for column in ("metric", "hybrid", "dense", "bm25", "unit"):
        table.add_column(column, justify="left" if column in ("metric", "unit") else "right")
    for name, key in (("shop", "quality_shop"), ("mixed", "quality_large")):
        q = figures[key]
        for group in ("all", "en", "zh"):
            for metric in ("recall@5", "mrr@10"):
                label = f"{name}: {metric} {group} ({q['hybrid'][group]['n']})"
                table.add_row(label, *(f"{q[m][group][metric]:.3f}" for m in MODES), "")
    lat = figures["latency"]
    for stat in ("p50_ms", "p99_ms", "p50_ms_en", "p99_ms_en", "p50_ms_zh", "p99_ms_zh"):
        label = f"mixed: latency {stat[:3]} {stat[7:] or 'all'}"
        table.add_row(label, *(f"{lat[m][stat]:.2f}" for m in MODES), "ms")
    table.add_section()
    rows = (
        ("embedding model load", f"{figures['model_load_s']:.1f}", "s"),
        (f"build: {b['documents']:,} pages, {b['passages']:,} passages", f"{b['add_s']:.1f}", "s"),
        ("  embedding rate", f"{b['embed_rate_per_s']:.0f}", "passages/s"),
        ("load in a 2nd instance", f"{b['load_s']:.2f}", "s"),
        (f"update 1 page ({b['update_one_passages']} passages)", f"{b['update_one_s']:.2f}", "s"),
        ("reload after it", f"{b['reload_s']:.2f}", "s"),
        ("refresh, nothing new", f"{b['refresh_unchanged_us']:.1f}", "µs"),
    )
    for metric, value, unit in rows:
        table.add_row(metric, value, "", "", unit)
    out = Console(width=max(Console().width, 100))
    out.print(table)
    if gw := figures.get("gateway"):
        table = Table(
            title=f"gateway: {gw['requests']} chat completions each, the upstream a stub",
            caption=f"rag answers with sources: {gw['with_sources']:.0%}",
        )
        for column in ("gateway", "p50 ms", "p99 ms"):
            table.add_column(column, justify="left" if column == "gateway" else "right")
        for label in ("plain", "rag"):
            table.add_row(label, f"{gw[label]['p50_ms']:.1f}", f"{gw[label]['p99_ms']:.1f}")
        table.add_row("rag adds", f"{gw['added_p50_ms']:.1f}", "")
        out.print(table)


if __name__ == "__main__":
    main()
