"""Near-duplicate removal: retrain.data.dedup (bulk MinHash LSH) against the one-by-one way, same data, same run.

Data: --n synthetic product-FAQ records (seeded): half English, half Chinese, a question and a short answer each,
from templates, word lists, a pool of common Chinese characters and random order numbers and codes. About
--dup-share of them are planted near duplicates: a copy of an earlier original with one to three small edits
(a character changed, inserted or deleted, a punctuation mark changed or added, a word upper-cased, a space added),
in the question or the answer, placed anywhere after the original. A case-only copy is an exact duplicate after
normalization; the others are near duplicates or, when the edits cost too many shingles, not even that.

Timed, on the records in memory (no file I/O), repeats interleaved, medians:
  baseline  for each record in input order: `MinHash(num_perm)` updated shingle by shingle in a Python loop, then
            `MinHashLSH.query`; the record is removed when a returned (kept) record's `MinHash.jaccard` is
            >= threshold, otherwise it is inserted. Shingles: the same `text.shingles` of the same text.
  bulk      `dedup_records(records)`: exact duplicates, then bulk signatures, one insertion session, the sweep.
The kept sets must be identical (every repeat). The phases of the bulk way are timed once after the repeats.

Detection quality (not timed; the same for both ways, since their decisions are identical): over ALL records,
candidate pairs = pairs sharing an LSH band; called = candidate pairs whose estimated Jaccard >= threshold. The
ground truth is the exact Jaccard of the two shingle sets >= threshold, computed only for candidate pairs and
planted pairs (all pairs of 100,000 records would be 5e9). So precision (called pairs that are truly >= threshold)
is exact, while recall (truly similar pairs that were called) counts only the similar pairs among candidates and
planted pairs: an unplanted similar pair that LSH never proposed is not seen. The planted rows say how many planted
pairs are truly >= threshold, the share of those called, and the share of planted copies that the dedup removed.

    python -m bench.dedup                      # 100,000 records, median of 3
    python -m bench.dedup --n 2000 --repeats 1 --json figures.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from datasketch import LeanMinHash, MinHash
from rich.console import Console
from rich.table import Table

from retrain.data.dedup import (
    SCHEME,
    SEED,
    dedup_records,
    exact_duplicates,
    lsh_index,
    near_duplicates,
    record_text,
    signatures,
)
from retrain.data.text import shingles

EN_ADJ = "blue red black white wireless smart compact steel ceramic portable foldable quiet mini pro classic".split()
EN_NOUN = "kettle blender headphones backpack lamp charger keyboard monitor toaster vacuum scale speaker".split()
EN_VERB = "return exchange cancel track repair register".split()
EN_PROBLEM = "not charging, making noise, too hot, not turning on, blinking red, disconnecting".split(", ")
# Every question and every answer carries a random order number, model or code: like real tickets, two unrelated
# records of one template differ somewhere, and accidental near duplicates stay rare rather than grow with n^2.
EN_QUESTIONS = [
    "How do I {verb} my {product}, order {order}?",
    "Can I {verb} the {product} {model} after {days} days?",
    "Why is my {product} {problem}? Model {model}.",
    "Where is order {order} for the {product}?",
    "Does the {product} {model} come with a warranty?",
]
EN_ANSWERS = [
    "You can {verb} order {order} within {days} days from the orders page.",
    "Please contact support with order {order}; we reply within {hours} hours.",
    "Hold the power button for {secs} seconds; ticket {code}.",
    "It ships in {days} business days, tracking code {code}.",
    "Yes, a {years}-year warranty is included for model {model}.",
]
ZH_COLOR = "红色 蓝色 白色 黑色 粉色 金色 银色 灰色 绿色 紫色".split()
ZH_NOUN = "电水壶 蓝牙耳机 双肩包 台灯 充电器 键盘 显示器 面包机 吸尘器 体重秤 音箱 手表 路由器 空气炸锅".split()
ZH_VERB = "退货 换货 取消 维修 开发票 改地址".split()
ZH_PROBLEM = "充不进电 有杂音 发烫 开不了机 一直闪红灯 连不上网".split()
ZH_QUESTIONS = [
    "请问{product}可以{verb}吗？订单号{order}",
    "{product}买了{days}天了还能{verb}吗？型号{model}",
    "我的{product}{problem}怎么办？型号{model}",
    "订单{order}的{product}什么时候发货？",
    "{brand}的{product}保修几年？型号{model}",
]
ZH_ANSWERS = [
    "您好，{product}支持{days}天内{verb}，请在订单{order}页面申请。",
    "亲，请联系客服并提供订单{order}，我们会在{hours}小时内处理。",
    "请长按电源键{secs}秒后重试，工单号{code}。",
    "预计{days}个工作日内发货，物流单号{code}。",
    "{brand}的产品保修{years}年，型号{model}也在保修范围内。",
]
# Common characters for brand names and edits: Chinese text is mostly made of a few hundred of them.
ZH_POOL = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而"
ZH_POOL += "方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好"
PUNCT = "?!.,;。，？！、"


@dataclass(frozen=True)
class Data:
    records: list[dict]
    planted: list[tuple[int, int]]  # (original, copy)


def _slots(rng: random.Random, zh: bool) -> dict:
    digits = string.digits
    return {
        "product": rng.choice(ZH_COLOR) + rng.choice(ZH_NOUN) if zh else f"{rng.choice(EN_ADJ)} {rng.choice(EN_NOUN)}",
        "verb": rng.choice(ZH_VERB if zh else EN_VERB),
        "problem": rng.choice(ZH_PROBLEM if zh else EN_PROBLEM),
        "brand": "".join(rng.choices(ZH_POOL, k=2)),
        "order": "".join(rng.choices(digits, k=8)),
        "model": "".join(rng.choices(string.ascii_uppercase, k=2)) + "".join(rng.choices(digits, k=3)),
        "code": "".join(rng.choices(string.ascii_uppercase + digits, k=10)),
        "days": rng.randint(2, 90),
        "hours": rng.randint(1, 72),
        "secs": rng.randint(3, 30),
        "years": rng.randint(1, 5),
    }


def _edit(rng: random.Random, text: str) -> str:
    at = rng.randrange(len(text) + 1)
    kind = rng.choice(("change", "insert", "delete", "punct", "upper", "space"))
    letter = rng.choice(ZH_POOL) if rng.random() < 0.5 else rng.choice(string.ascii_lowercase)
    if kind == "change" and at < len(text):
        return text[:at] + letter + text[at + 1 :]
    if kind == "delete" and at < len(text):
        return text[:at] + text[at + 1 :]
    if kind == "punct":
        marks = [i for i, c in enumerate(text) if c in PUNCT]
        if marks:
            i = rng.choice(marks)
            return text[:i] + rng.choice(PUNCT) + text[i + 1 :]
        return text + rng.choice(PUNCT)
    if kind == "upper":
        return text.upper()  # normalized away: together with no other edit, an exact duplicate
    if kind == "space":
        return text[:at] + " " + text[at:]
    return text[:at] + letter + text[at:]


def make_data(n: int, dup_share: float = 0.1, seed: int = 7) -> Data:
    """n records: originals from the templates and planted copies of earlier originals (see the docstring)."""
    rng = random.Random(seed)
    records: list[dict] = []
    originals: list[int] = []
    planted: list[tuple[int, int]] = []
    for i in range(n):
        if originals and rng.random() < dup_share:
            source = rng.choice(originals)
            record = dict(records[source], source="planted")
            for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
                part = rng.choice(("question", "answer"))
                record[part] = _edit(rng, record[part])
            planted.append((source, i))
        else:
            zh = rng.random() < 0.5
            slots = _slots(rng, zh)
            question = rng.choice(ZH_QUESTIONS if zh else EN_QUESTIONS).format(**slots)
            answer = rng.choice(ZH_ANSWERS if zh else EN_ANSWERS).format(**slots)
            record = {"question": question, "answer": answer, "source": "faq"}
            originals.append(i)
        records.append(record)
    return Data(records, planted)


def baseline_kept(texts: list[str], threshold: float, num_perm: int, ngram: int) -> list[int]:
    """The straightforward way: one MinHash per text by `update`, query then insert, record by record."""
    lsh = lsh_index(threshold, num_perm)
    kept: dict[int, MinHash] = {}
    for i, text in enumerate(texts):
        minhash = MinHash(num_perm=num_perm)
        for shingle in shingles(text, ngram):
            minhash.update(shingle.encode("utf-8"))
        if any(minhash.jaccard(kept[key]) >= threshold for key in lsh.query(minhash)):
            continue
        lsh.insert(i, minhash)
        kept[i] = minhash
    return list(kept)


def phases(records: list[dict], threshold: float, num_perm: int, ngram: int) -> dict[str, float]:
    """Seconds per phase of dedup_records, timed once: what dominates the bulk way."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    survivors, _ = exact_duplicates(records)
    out["exact duplicates"] = time.perf_counter() - t
    t = time.perf_counter()
    sets = [shingles(record_text(records[i]), ngram) for i in survivors]
    out["text.shingles"] = time.perf_counter() - t
    t = time.perf_counter()
    sigs = signatures(sets, num_perm)
    out["signatures"] = time.perf_counter() - t
    t = time.perf_counter()
    near_duplicates(sigs, threshold)
    out["LSH buckets + sweep"] = time.perf_counter() - t
    return out


def quality(data: Data, threshold: float, num_perm: int, ngram: int, removed: set[int]) -> dict[str, float]:
    """Pairs judged against exact Jaccard (see the module docstring)."""
    sets = [shingles(record_text(r), ngram) for r in data.records]
    sigs = signatures(sets, num_perm)
    lsh = lsh_index(threshold, num_perm)
    with lsh.insertion_session() as session:
        for i, row in enumerate(sigs):
            session.insert(i, LeanMinHash(seed=SEED, hashvalues=row, scheme=SCHEME), check_duplication=False)
    candidates: set[tuple[int, int]] = set()
    for table in lsh.hashtables:
        for key, count in table.itemcounts().items():
            if count > 1:
                candidates.update(combinations(sorted(table.get(key)), 2))
    planted = set(data.planted)

    def exact(pair: tuple[int, int]) -> float:
        a, b = sets[pair[0]], sets[pair[1]]
        return len(a & b) / len(a | b)

    truth = {p for p in candidates | planted if exact(p) >= threshold}
    called = {p for p in candidates if np.count_nonzero(sigs[p[0]] == sigs[p[1]]) / num_perm >= threshold}
    planted_true = planted & truth
    return {
        "candidates": len(candidates),
        "called": len(called),
        "truth": len(truth),
        "precision": len(called & truth) / len(called) if called else 1.0,
        "recall": len(called & truth) / len(truth) if truth else 1.0,
        "planted": len(planted),
        "planted_true": len(planted_true),
        "planted_recall": len(called & planted_true) / len(planted_true) if planted_true else 1.0,
        "planted_removed": sum(copy in removed for _, copy in data.planted) / len(planted) if planted else 1.0,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="records")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dup-share", type=float, default=0.1, help="share of planted near duplicates")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--ngram", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    data = make_data(args.n, args.dup_share, args.seed)
    texts = [record_text(r) for r in data.records]
    wall: dict[str, list[float]] = {"baseline": [], "bulk": []}
    cpu: dict[str, list[float]] = {"baseline": [], "bulk": []}  # the machine is shared: CPU time as a cross-check
    identical = True
    for repeat in range(args.repeats):
        for name in ("baseline", "bulk"):
            t, c = time.perf_counter(), time.process_time()
            if name == "baseline":
                expected = baseline_kept(texts, args.threshold, args.num_perm, args.ngram)
            else:
                result = dedup_records(data.records, "both", args.threshold, args.num_perm, args.ngram)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        identical &= result.kept == expected
        console.print(f"  repeat {repeat + 1}: baseline {wall['baseline'][-1]:.2f} s, bulk {wall['bulk'][-1]:.2f} s")
    base, bulk = statistics.median(wall["baseline"]), statistics.median(wall["bulk"])
    base_cpu, bulk_cpu = statistics.median(cpu["baseline"]), statistics.median(cpu["bulk"])
    split = phases(data.records, args.threshold, args.num_perm, args.ngram)
    removed = set(range(args.n)) - set(result.kept)
    q = quality(data, args.threshold, args.num_perm, args.ngram, removed)

    table = Table(title=f"dedup bench: {args.n:,} records, threshold {args.threshold}, median of {args.repeats}")
    for column in ("metric", "value", "unit", "goal", "ok"):
        table.add_column(column, justify="right" if column == "value" else "left")

    def row(metric: str, value: str, unit: str = "", goal: str = "", ok: bool | None = None) -> None:
        table.add_row(metric, value, unit, goal, "" if ok is None else ("yes" if ok else "NO"))

    row("baseline: update loop, query+insert", f"{base:.2f}", "s")
    row("bulk: dedup_records", f"{bulk:.2f}", "s")
    row("speed-up (wall)", f"{base / bulk:.1f}", "x", ">= 3", base / bulk >= 3)
    row("speed-up (CPU time)", f"{base_cpu / bulk_cpu:.1f}", "x")
    row("kept sets identical, every repeat", "yes" if identical else "NO", "", "yes", identical)
    row("kept", f"{len(result.kept):,}", "records")
    row("removed: exact / near", f"{result.removed('exact'):,} / {result.removed('near'):,}", "records")
    for name, value in split.items():
        row(f"  bulk: {name}", f"{value:.2f}", "s")
    row("LSH candidate pairs / called", f"{q['candidates']:,} / {q['called']:,}", "pairs")
    row("pairs truly >= threshold", f"{q['truth']:,}", "pairs")
    row("precision (pairs)", f"{q['precision']:.1%}")
    row("recall (pairs seen)", f"{q['recall']:.1%}")
    row("planted pairs / truly >= threshold", f"{q['planted']:,} / {q['planted_true']:,}", "pairs")
    row("recall on planted, truly similar", f"{q['planted_recall']:.1%}")
    row("planted copies removed", f"{q['planted_removed']:.1%}")
    Console().print(table)
    figures = {"baseline_s": base, "bulk_s": bulk, "speedup": base / bulk, "identical": identical, **q, "phases": split}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
