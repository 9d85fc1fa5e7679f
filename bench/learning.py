"""Learning figures of the default model, side by side in one run: base, SFT, and one loop turn through the gateway.

    python -m bench.learning offline [--sft-dir DIR]          # base vs SFT on the held-out test questions
    python -m bench.learning turn [--rate 1.0] [--timeout 1500]  # one loop turn against a running `flywheel up`
    python -m bench.learning rag --sft-dir DIR                # retrieval alone, fine-tuning alone, both

`offline` (this process, 2 CPU cores): builds SmolLM2 when missing, trains the SFT version with the config
`flywheel up` uses (timed; or takes --sft-dir), and asks base and SFT the demo shop's held-out test questions
(retrain/demo: each intent's sixth paraphrase, never trained on). Correct: ROUGE-L >= 0.7 against the reference.

`turn` (against the running stack, everything through the gateway at temperature 0): asks the test questions
(the regression set), runs `flywheel demo` (simulated users correct the loop questions the SFT version does not
know, the stack trains, gates, canaries and promotes), then asks again: the corrected questions (ROUGE-L >= 0.8
against the correction), their unseen paraphrases, and the test questions (kept: ROUGE-L >= 0.9 against the
answer before). Both print a table and write JSON to --out.

`rag` (this process): the same held-out test questions answered three ways in one run, each with greedy decoding:
retrieval alone (the base model given the bundled knowledge base's top passages, the prompt the gateway builds for
a `rag` alias), fine-tuning alone (the SFT adapter, no passages) and both (the SFT adapter given the passages).
Also prints how often the top passages hold the labelled document (inference/retrieval/examples/
shop_questions.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

LEARNT, CORRECT, KEPT = 0.8, 0.7, 0.9
BASE_DIR_HELP = "a model directory (any Hugging Face causal LM); default SmolLM2, built when missing"


def share(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0


def accuracy(answers, qas) -> dict:
    from retrain.rouge import rouge_l

    ok = [rouge_l(a, qa.answer) >= CORRECT for a, qa in zip(answers, qas, strict=True)]
    by_lang = {lang: share(o for o, qa in zip(ok, qas, strict=True) if qa.lang == lang) for lang in ("en", "zh")}
    return {"accuracy": share(ok), **{f"accuracy_{k}": v for k, v in by_lang.items()}, "n": len(ok)}


def base_model(args) -> Path:
    """--base-dir as it is when it holds a model (any Hugging Face causal LM directory); otherwise SmolLM2, built
    there (default <data dir>/models/smollm2) when missing."""
    from retrain.base_model import build_base_model
    from retrain.settings import RetrainSettings

    if args.base_dir is not None and (args.base_dir / "config.json").is_file():
        return args.base_dir.resolve()
    return build_base_model(args.base_dir or RetrainSettings().data_dir / "models" / "smollm2")


def offline(args) -> dict:
    from retrain.bootstrap import demo_rows
    from retrain.config import SFTJobConfig, load_config
    from retrain.demo import load_domain, sft_splits
    from retrain.generate import Generator
    from retrain.settings import RetrainSettings
    from retrain.sft import train_sft
    from retrain.training import rich_progress

    settings = RetrainSettings()
    base = base_model(args)
    test = sft_splits(load_domain())["test"]
    result = {"base_model": str(base)}
    sft_dir = args.sft_dir
    if sft_dir is None:
        train, val = demo_rows()
        config = load_config(settings.sft_config, cls=SFTJobConfig)
        started = time.monotonic()
        trained = train_sft(
            train, base, args.out / "sft", config, eval_rows=val, device="cpu", callbacks=[rich_progress("SFT")]
        )
        result["sft_seconds"] = round(time.monotonic() - started, 1)
        result["sft_steps"] = trained.steps
        result["sft_final"] = trained.final
        sft_dir = trained.adapter_dir
    gen = Generator(base, max_new_tokens=64)
    gen.load("sft", sft_dir)
    prompts = [[{"role": "user", "content": qa.question}] for qa in test]
    result["base"] = accuracy(gen.answers(prompts), test)
    result["sft"] = accuracy(sft_answers := gen.answers(prompts, adapter="sft"), test)
    result["sft_examples"] = [
        {"q": qa.question, "answer": a, "reference": qa.answer}
        for qa, a in list(zip(test, sft_answers, strict=True))[:10]
    ]
    table = Table(title=f"held-out test questions ({len(test)}), correct at ROUGE-L >= {CORRECT}")
    for column in ("model", "all", "English", "Chinese", "train s"):
        table.add_column(column)
    for name in ("base", "sft"):
        r = result[name]
        seconds = str(result.get("sft_seconds", "-")) if name == "sft" else "-"
        table.add_row(name, f"{r['accuracy']:.0%}", f"{r['accuracy_en']:.0%}", f"{r['accuracy_zh']:.0%}", seconds)
    Console().print(table)
    return result


def rag(args) -> dict:
    from inference.gateway.rag import Passage, grounded
    from inference.retrieval import KnowledgeBase
    from inference.retrieval.examples import SHOP_DIR, labelled_documents
    from retrain.demo import load_domain, sft_splits
    from retrain.generate import Generator

    base = base_model(args)
    kb_dir = args.out / "kb"
    kb = KnowledgeBase.open(kb_dir)
    if not kb.documents():
        kb.add([SHOP_DIR], root=SHOP_DIR)
    splits = sft_splits(load_domain())
    test = splits["test"]
    labels = labelled_documents()

    def lookup(question: str) -> list[Passage]:
        hits = kb.search(question, k=args.k)
        return [Passage(h.document, h.version, h.passage, h.score, h.title, h.text) for h in hits]

    started = time.monotonic()
    found = [lookup(qa.question) for qa in test]
    lookup_ms = (time.monotonic() - started) * 1000 / len(test)
    labelled = [(qa, f) for qa, f in zip(test, found, strict=True) if qa.question in labels]
    hit = share(any(p.document == labels[qa.question] for p in f) for qa, f in labelled)
    plain = [[{"role": "user", "content": qa.question}] for qa in test]
    with_passages = [grounded(p, f) for p, f in zip(plain, found, strict=True)]
    gen = Generator(base, max_new_tokens=64, batch_size=8)
    gen.load("sft", args.sft_dir)
    rows = {
        "base model": accuracy(gen.answers(plain), test),
        "retrieval alone (base + passages)": accuracy(gen.answers(with_passages), test),
        "fine-tuning alone (SFT)": accuracy(gen.answers(plain, adapter="sft"), test),
        "both (SFT + passages)": accuracy(gen.answers(with_passages, adapter="sft"), test),
    }
    result = {"k": args.k, "retrieval_hit": hit, "retrieval_hit_n": len(labelled), "lookup_ms": lookup_ms, "rows": rows}
    table = Table(
        title=f"held-out test questions ({len(test)}), correct at ROUGE-L >= {CORRECT}; top {args.k} passages "
        f"hold the labelled document for {hit:.0%} of {len(labelled)}"
    )
    for column in ("answered by", "all", "English", "Chinese"):
        table.add_column(column)
    for name, r in rows.items():
        table.add_row(name, f"{r['accuracy']:.0%}", f"{r['accuracy_en']:.0%}", f"{r['accuracy_zh']:.0%}")
    Console().print(table)
    return result


def turn(args) -> dict:
    from deploy.demo import DemoConfig, Gateway, run_demo
    from inference.gateway.settings import GatewaySettings
    from retrain.demo import load_domain, sft_splits
    from retrain.rouge import rouge_l
    from schemas.settings import CommonSettings

    settings = CommonSettings()
    url = f"http://127.0.0.1:{GatewaySettings().gateway_port}"
    key = (settings.data_dir / "dev-api-key").read_text().strip()
    test = sft_splits(load_domain())["test"]
    gateway = Gateway(url, key, settings.model_alias, max_tokens=64)
    before = gateway.ask_all("bench-regression", test, "regression")
    config = DemoConfig(
        gateway_url=url,
        api_key=key,
        kafka_bootstrap=settings.kafka_bootstrap,
        redis_url=settings.redis_dsn,
        alias=settings.model_alias,
        users=args.users,
        rate=args.rate,
        timeout=args.timeout,
        base_version=settings.served_model_name,
    )
    console = Console()
    last = [0.0]

    def show(p) -> None:  # one line every 30 s: this bench's output is read after the run
        if p.elapsed_s - last[0] >= 30:
            last[0] = p.elapsed_s
            console.log(
                f"{p.elapsed_s:5.0f}s sent {p.sent} down {p.thumbs_down} corrections {p.corrections} "
                f"routes {p.routes} {p.note}"
            )

    run = run_demo(config, on_progress=show)
    after = gateway.ask_all("bench-regression", test, "regression")
    kept = [rouge_l(b.answer, a.answer) >= KEPT for a, b in zip(before, after, strict=True)]
    corrected = [e.score is not None and e.score >= LEARNT for e in run.after]
    unseen = [e.score is not None and e.score >= LEARNT for e in run.unseen]
    first = {}
    for e in run.exchanges:
        if e.corrected and e.question not in first:
            first[e.question] = e
    result = {
        "outcome": run.state.outcome,
        "version": run.state.version,
        "job_id": run.state.job_id,
        "minutes": round((run.ended_at - run.started_at) / 60, 1),
        "requests": len(run.exchanges),
        "corrected": share(corrected),
        "corrected_n": len(corrected),
        "paraphrases": share(unseen),
        "paraphrases_n": len(unseen),
        "kept": share(kept),
        "kept_n": len(kept),
        "test_accuracy_before": accuracy([e.answer for e in before], test)["accuracy"],
        "test_accuracy_after": accuracy([e.answer for e in after], test)["accuracy"],
        "before_after": [
            {
                "q": e.question,
                "before": first[e.question].answer if e.question in first else None,
                "after": e.answer,
                "correction": e.reference,
            }
            for e in run.after
        ],
        "note": run.note,
    }
    table = Table(
        title=f"one loop turn through the gateway ({result['outcome']} {result['version']}, "
        f"{result['minutes']} min, {args.rate} requests/s)"
    )
    for column in ("figure", "value", "n", "goal"):
        table.add_column(column)
    table.add_row(
        "corrected questions answered with the correction (ROUGE-L >= 0.8)",
        f"{result['corrected']:.0%}",
        str(len(corrected)),
        ">= 80%",
    )
    table.add_row("their unseen paraphrases", f"{result['paraphrases']:.0%}", str(len(unseen)), ">= 50%")
    table.add_row("regression set kept (ROUGE-L >= 0.9 vs before)", f"{result['kept']:.0%}", str(len(kept)), ">= 95%")
    table.add_row(
        "test accuracy before / after",
        f"{result['test_accuracy_before']:.0%} / {result['test_accuracy_after']:.0%}",
        str(len(test)),
        "",
    )
    console.print(table)
    return result


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    off = sub.add_parser("offline", help="base vs SFT on the held-out test questions")
    off.add_argument(
        "--base-dir",
        type=Path,
        default=None,
        help=BASE_DIR_HELP,
    )
    off.add_argument("--sft-dir", type=Path, default=None, help="an SFT adapter to evaluate instead of training one")
    rg = sub.add_parser("rag", help="retrieval alone, fine-tuning alone and both on the held-out test questions")
    rg.add_argument(
        "--base-dir",
        type=Path,
        default=None,
        help=BASE_DIR_HELP,
    )
    rg.add_argument("--sft-dir", type=Path, required=True, help="the SFT adapter (e.g. from `offline`)")
    rg.add_argument("--k", type=int, default=3, help="passages per question (the gateway's default)")
    on = sub.add_parser("turn", help="one loop turn through the gateway of a running stack")
    on.add_argument("--rate", type=float, default=1.0)
    on.add_argument("--users", type=int, default=20)
    on.add_argument("--timeout", type=float, default=1500.0)
    for p in (off, rg, on):
        p.add_argument("--out", type=Path, default=Path(".flywheel/bench/learning"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"offline": offline, "rag": rag, "turn": turn}[args.part](args)
    path = args.out / f"{args.part}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    Console().print(f"written {path}")
    return result


if __name__ == "__main__":
    main()
