"""`flywheel data stats`: a quality report on a data set before it goes to training.

Reads JSON lines: QA records {"question", "answer", "source"} or DPO pairs {"prompt", "chosen", "rejected"}
(for a pair the question is the prompt's last user turn and the answer the chosen one). Writes to --out DIR:
- report.md (report.html with --html): counts, length percentiles, instruction diversity, frequent words,
  duplicates left and warnings;
- length_chars.png and length_words.png: histograms of question and answer lengths;
- stats.json: the same figures, for scripts;
and prints a short summary to the terminal.

    flywheel data stats data/qa.jsonl --out reports/qa [--html] [--top 20]

Lengths are in characters (a Chinese character counts one) and in `text.words` (jieba words for Chinese),
so Chinese and English data read on the same scale. Duplicates are whole records (question and answer, and
the rejected answer of a pair), counted by `flywheel data dedup`'s own function; a question asked twice with
different answers lowers the unique-question share instead. A malformed line stops the report with its line
number, as in `flywheel data format`.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click

from retrain.data.formats import chat_prompt
from retrain.data.records import RecordError, read_jsonl
from retrain.data.text import normalize, words

# Warning thresholds. Below half unique questions the set is mostly repeats of a few; distinct-2 under 0.3
# means most question bigrams are recurring templates ("how do I ..."); answers with a median under 20
# characters are one-word replies that teach a model to be curt; over 10% duplicates overweights a few answers.
MIN_UNIQUE_QUESTION_SHARE = 0.5
MIN_DISTINCT_2 = 0.3
MIN_MEDIAN_ANSWER_CHARS = 20
MAX_DUPLICATE_SHARE = 0.1
NEAR_DUPLICATE_JACCARD = 0.8

# Function words that would top every list and say nothing about the data's topics.
STOPWORDS = frozenset(
    "a an the is are was were be been am to of and or in on at for with by from as it its this that these those "
    "i you he she we they me my your our their us do does did can could will would should shall may might "
    "what how when where which who why if not no yes so but than then there here have has had please about "
    "的 了 是 在 我 你 您 他 她 它 我们 你们 他们 吗 呢 吧 啊 呀 和 与 及 或 有 就 都 也 还 又 很 这 那 这个 那个 "
    "什么 怎么 怎么样 如何 一个 可以 请 会 要 能 把 被 给 对 从 到 为 将 已 已经 没有 不 个 么".split()
)
PERCENTILES = (("min", 0), ("p25", 25), ("median", 50), ("p75", 75), ("p95", 95), ("max", 100))
LENGTHS = ("question_chars", "answer_chars", "question_words", "answer_words")


@dataclass(frozen=True)
class Sample:
    """One record as the report sees it."""

    question: str
    answer: str
    source: str
    rejected: str | None = None  # DPO pairs only


def _string(record: dict, field: str, line: int) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        raise RecordError(line, f"{field!r} is {'missing' if value is None else 'not a string'}")
    return value


def sample(record: dict, line: int) -> Sample:
    source = str(record.get("source") or "")
    if "question" in record:
        return Sample(_string(record, "question", line), _string(record, "answer", line), source)
    if "prompt" in record:
        question = chat_prompt(record, line)[-1]["content"]
        return Sample(question, _string(record, "chosen", line), source, _string(record, "rejected", line))
    raise RecordError(line, "neither a QA record (question, answer) nor a DPO pair (prompt, chosen, rejected)")


def read_samples(path: str | Path) -> list[Sample]:
    return [sample(record, line) for line, record in read_jsonl(path)]


def percentiles(values: list[int]) -> dict:
    import numpy as np

    if not values:
        return {name: 0.0 for name, _ in PERCENTILES} | {"mean": 0.0}
    found = np.percentile(values, [q for _, q in PERCENTILES])  # linear interpolation between ranks
    return {name: float(v) for (name, _), v in zip(PERCENTILES, found, strict=True)} | {"mean": float(np.mean(values))}


def distinct_n(sequences: list[list[str]], n: int) -> float:
    """Distinct n-grams over all n-grams of all sequences (Li et al. 2016); 0 when there are none."""
    grams = [tuple(seq[i : i + n]) for seq in sequences for i in range(len(seq) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def frequent_words(texts: list[str], top: int) -> list[tuple[str, int]]:
    """The `top` most frequent words outside the stopwords; ties in order of first appearance."""
    counts = Counter(w for t in texts for w in words(t) if w not in STOPWORDS and not w.isdigit())
    return counts.most_common(top)


def duplicates(samples: list[Sample]) -> dict:
    """Records `flywheel data dedup` would still drop: exact repeats after `normalize`, then near repeats
    (MinHash LSH, estimated Jaccard >= 0.8 over character shingles): the same function, so the two agree."""
    from retrain.data.dedup import dedup_records

    # A pair's rejected answer joins its answer: pairs that differ only in the rejected answer are distinct.
    records = [
        {"question": s.question, "answer": s.answer if s.rejected is None else f"{s.answer}\n{s.rejected}"}
        for s in samples
    ]
    result = dedup_records(records, threshold=NEAR_DUPLICATE_JACCARD)
    return {"exact": result.removed("exact"), "near": result.removed("near")}


def compute(samples: list[Sample], top: int = 20) -> tuple[dict, dict[str, list[int]]]:
    """Every figure of the report (plain JSON values), and the lengths behind the histograms."""
    question_words = [words(s.question) for s in samples]
    lengths = {
        "question_chars": [len(s.question) for s in samples],
        "answer_chars": [len(s.answer) for s in samples],
        "question_words": [len(w) for w in question_words],
        "answer_words": [len(words(s.answer)) for s in samples],
    }
    n = len(samples)
    pairs = [s for s in samples if s.rejected is not None]
    unique_questions = len({normalize(s.question) for s in samples})
    figures = {
        "counts": {
            "records": n,
            "qa": n - len(pairs),
            "dpo": len(pairs),
            "empty_answers": sum(not s.answer.strip() for s in samples),
            "chosen_equals_rejected": sum(normalize(s.answer) == normalize(s.rejected) for s in pairs),
            "sources": dict(Counter(s.source or "(none)" for s in samples).most_common()),
        },
        "lengths": {name: percentiles(values) for name, values in lengths.items()},
        "diversity": {
            "unique_questions": unique_questions,
            "unique_question_share": unique_questions / n if n else 0.0,
            "distinct_first_words": len({w[0] for w in question_words if w}),
            "distinct_first_bigrams": len({tuple(w[:2]) for w in question_words if len(w) >= 2}),
            "distinct_1": distinct_n(question_words, 1),
            "distinct_2": distinct_n(question_words, 2),
        },
        "frequent_words": {
            "question": frequent_words([s.question for s in samples], top),
            "answer": frequent_words([s.answer for s in samples], top),
        },
        "duplicates": duplicates(samples),
    }
    figures["warnings"] = find_warnings(figures)
    return figures, lengths


def find_warnings(figures: dict) -> list[str]:
    """What a person should look at before training on the data; empty when nothing stands out."""
    counts, diversity = figures["counts"], figures["diversity"]
    n = counts["records"]
    if not n:
        return ["no records"]
    out = []
    if diversity["unique_question_share"] < MIN_UNIQUE_QUESTION_SHARE or diversity["distinct_2"] < MIN_DISTINCT_2:
        out.append(
            f"low diversity: {diversity['unique_question_share']:.0%} unique questions "
            f"(want >= {MIN_UNIQUE_QUESTION_SHARE:.0%}), distinct-2 {diversity['distinct_2']:.2f} "
            f"(want >= {MIN_DISTINCT_2})"
        )
    median_answer = figures["lengths"]["answer_chars"]["median"]
    if median_answer < MIN_MEDIAN_ANSWER_CHARS:
        out.append(f"short outputs: median answer {median_answer:g} characters (want >= {MIN_MEDIAN_ANSWER_CHARS})")
    dup = figures["duplicates"]
    if (dup["exact"] + dup["near"]) / n > MAX_DUPLICATE_SHARE:
        out.append(
            f"many duplicates: {dup['exact']} exact and {dup['near']} near of {n} records "
            f"(want <= {MAX_DUPLICATE_SHARE:.0%}); run the dedup step"
        )
    if counts["chosen_equals_rejected"]:
        out.append(f"{counts['chosen_equals_rejected']} pair(s) with the same chosen and rejected answer")
    return out


def histograms(lengths: dict[str, list[int]], folder: Path) -> list[Path]:
    """length_chars.png and length_words.png: question and answer side by side, one PNG per unit."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    paths = []
    for unit in ("chars", "words"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, part in zip(axes, ("question", "answer"), strict=True):
            ax.hist(lengths[f"{part}_{unit}"], bins=30, color="tab:blue" if part == "question" else "tab:green")
            ax.set_title(f"{part} length")
            ax.set_xlabel("characters" if unit == "chars" else "words")
            ax.set_ylabel("records")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(folder / f"length_{unit}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths


def _number(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


def sections(figures: dict, images: list[Path]) -> list[tuple[str, list]]:
    """The report as (heading, blocks); a block is a table (header, rows), an image path or a list of lines."""
    counts, div, dup = figures["counts"], figures["diversity"], figures["duplicates"]
    n = counts["records"]
    count_rows = [["records", n], ["QA records", counts["qa"]], ["DPO pairs", counts["dpo"]]]
    count_rows += [["empty answers", counts["empty_answers"]]]
    count_rows += [[f"source: {name}", k] for name, k in counts["sources"].items()]
    length_rows = [
        [name.replace("_", " ")]
        + [_number(figures["lengths"][name][k]) for k, _ in PERCENTILES]
        + [_number(round(figures["lengths"][name]["mean"], 1))]
        for name in LENGTHS
    ]
    diversity_rows = [
        ["unique questions", f"{div['unique_questions']} of {n} ({div['unique_question_share']:.0%})"],
        ["distinct first words", div["distinct_first_words"]],
        ["distinct first bigrams", div["distinct_first_bigrams"]],
        ["distinct-1 (question words)", f"{div['distinct_1']:.3f}"],
        ["distinct-2 (question words)", f"{div['distinct_2']:.3f}"],
    ]
    duplicate_rows = [
        ["exact (after normalizing)", dup["exact"]],
        [f"near (Jaccard >= {NEAR_DUPLICATE_JACCARD})", dup["near"]],
    ]
    words_blocks = [
        (["question word", "count"], figures["frequent_words"]["question"]),
        (["answer word", "count"], figures["frequent_words"]["answer"]),
    ]
    return [
        ("Counts", [(["", "count"], count_rows)]),
        ("Lengths", [(["", *(k for k, _ in PERCENTILES), "mean"], length_rows), *images]),
        ("Instruction diversity", [(["", "value"], diversity_rows)]),
        ("Most frequent words", words_blocks),
        ("Duplicates left", [(["", "records"], duplicate_rows)]),
        ("Warnings", [figures["warnings"] or ["none"]]),
    ]


def markdown(title: str, parts: list[tuple[str, list]]) -> str:
    out = [f"# {title}", ""]
    for heading, blocks in parts:
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, Path):
                out.append(f"![{block.stem}]({block.name})")
            elif isinstance(block, list):
                out.extend(f"- {line}" for line in block)
            else:
                header, rows = block
                cells = [header, ["---"] * len(header), *rows]
                out.extend("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in cells)
            out.append("")
    return "\n".join(out)


def html_page(title: str, parts: list[tuple[str, list]]) -> str:
    esc = html.escape
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title></head><body>"]
    out.append(f"<h1>{esc(title)}</h1>")
    for heading, blocks in parts:
        out.append(f"<h2>{esc(heading)}</h2>")
        for block in blocks:
            if isinstance(block, Path):
                out.append(f"<img src='{esc(block.name)}' alt='{esc(block.stem)}'>")
            elif isinstance(block, list):
                out.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in block) + "</ul>")
            else:
                header, rows = block
                head = "".join(f"<th>{esc(str(c))}</th>" for c in header)
                body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                out.append(f"<table border='1'><tr>{head}</tr>{body}</table>")
    return "\n".join(out) + "\n</body></html>\n"


def write_report(samples: list[Sample], folder: str | Path, title: str, as_html: bool = False, top: int = 20) -> dict:
    """report.md or report.html, the two PNGs and stats.json in `folder`; returns the figures."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures, lengths = compute(samples, top)
    parts = sections(figures, histograms(lengths, folder))
    if as_html:
        (folder / "report.html").write_text(html_page(title, parts), encoding="utf-8")
    else:
        (folder / "report.md").write_text(markdown(title, parts), encoding="utf-8")
    (folder / "stats.json").write_text(json.dumps(figures, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return figures


def summary(figures: dict, report: Path):
    """A short rich table for the terminal: the headline figures and every warning."""
    from rich.markup import escape
    from rich.table import Table

    div, dup = figures["diversity"], figures["duplicates"]
    table = Table(title=escape(f"data stats -> {report}"), show_header=False)
    table.add_row("records", str(figures["counts"]["records"]))
    table.add_row(
        "median question / answer chars",
        f"{figures['lengths']['question_chars']['median']:g} / {figures['lengths']['answer_chars']['median']:g}",
    )
    table.add_row("unique questions", f"{div['unique_question_share']:.0%}")
    table.add_row("distinct-2", f"{div['distinct_2']:.3f}")
    table.add_row("duplicates (exact / near)", f"{dup['exact']} / {dup['near']}")
    for warning in figures["warnings"]:
        table.add_row("[yellow]warning[/yellow]", f"[yellow]{escape(warning)}[/yellow]")
    return table


@click.command("stats")
@click.argument("input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True, help="report folder")
@click.option("--html", "as_html", is_flag=True, help="write report.html instead of report.md")
@click.option("--top", default=20, show_default=True, help="how many frequent words to list")
def stats_command(input_file, out_dir, as_html, top) -> None:
    """Write a quality report on the QA records or DPO pairs in INPUT_FILE."""
    from rich.console import Console

    try:
        samples = read_samples(input_file)
    except RecordError as e:
        raise click.ClickException(f"{input_file}: {e}") from e
    if not samples:
        raise click.ClickException(f"{input_file}: no records")
    figures = write_report(samples, out_dir, f"Data report: {input_file.name}", as_html, top)
    Console().print(summary(figures, out_dir / ("report.html" if as_html else "report.md")))


def main() -> None:
    stats_command()


if __name__ == "__main__":
    main()
