"""Duplicate removal for question-answer records (`flywheel data dedup`): exact, then near duplicates.

Reads one JSON-lines file of records (`question`, `answer`, any other keys kept); writes the kept records, in input
order and unchanged, to `--out`, and with `--clusters` one JSON line per cluster:
`{"kept": 3, "removed": [8, 41], "kind": "near", "jaccard": [0.86, 0.91]}` (indexes are 0-based record positions
in the input, blank lines not counted; `jaccard` is the MinHash estimate per removed record, 1.0 for exact).

    flywheel data dedup faq.jsonl --out faq.dedup.jsonl --clusters faq.clusters.jsonl --threshold 0.8
    python -m retrain.data.dedup faq.jsonl --out faq.dedup.jsonl --field question

1. Exact: records whose normalized question and answer are equal; the first is kept.
2. Near: MinHash LSH (datasketch) over character n-gram shingles of the normalized `--field` text; characters, not
   words, because Chinese has no spaces and a one-character edit should cost a few shingles, not a word.
   The rule: a record is removed when an earlier KEPT record is a near duplicate of it, i.e. an LSH candidate (the
   two share a band) whose estimated Jaccard similarity is >= the threshold. Querying a `MinHashLSH` before
   inserting each record decides exactly this; bench/dedup.py checks that the kept sets are identical.

Why in bulk (cProfile of that one-by-one way on 5,000 bench records): two thirds of its time go to
`MinHash.update`, a dozen numpy calls per shingle, a sixth to creating a `MinHash` per record (it draws its
permutations again), a tenth to LSH queries and inserts. Here each distinct shingle is hashed once (SHA-1, as
datasketch does), the permutations are applied to all shingles at once with numpy and the minimum per record taken
with `minimum.reduceat`: the signatures are bit for bit those of `MinHash.update`. The LSH is read in bulk: the
bands are `MinHashLSH`'s own (its b x r for the threshold) and one `np.unique` per band finds the buckets. Filling a
`MinHashLSH` in an insertion session and reading its buckets gives the same buckets but took 1.2 s of CPU for
20,000 records, more than the signatures; `np.unique` takes 0.07 s. Only rows in a shared bucket are then swept in
input order. bench/dedup.py, 100,000 records on 2 shared cores: 13x the one-by-one way (10x in CPU time); of the
rest, half is the signatures (the Python pass over every shingle, then numpy) and a third `text.shingles`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from datasketch import MinHash, MinHashLSH
from rich.console import Console
from rich.table import Table

from retrain.data.records import RecordError, read_records, write_jsonl
from retrain.data.text import normalize, shingles

FIELDS = ("question", "answer", "both")
SEED = 1  # datasketch's default: signatures equal those of a plain MinHash(num_perm)
SCHEME = "affine32"  # datasketch's default permutation scheme since 2.0: (a * fmix32(h) + b) mod 2^32
# Rows of (shingle x permutation) values per numpy step: 8,192 x 128 x 4 bytes = 4 MiB stays in cache.
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class Cluster:
    """Records removed as duplicates of one kept record; `jaccard` is the estimate per removed record."""

    kept: int
    removed: tuple[int, ...]
    kind: str  # "exact" or "near"
    jaccard: tuple[float, ...]

    def to_json(self) -> dict:
        return {"kept": self.kept, "removed": list(self.removed), "kind": self.kind, "jaccard": list(self.jaccard)}


@dataclass(frozen=True)
class DedupResult:
    """What `dedup_records` decided: the kept positions and the clusters of the removed ones."""

    records_in: int
    kept: list[int]  # input positions, ascending
    clusters: list[Cluster]  # ordered by kept position, exact before near

    def removed(self, kind: str) -> int:
        return sum(len(c.removed) for c in self.clusters if c.kind == kind)


# -- texts -------------------------------------------------------------------------------------------


def record_text(record: dict, field: str = "both") -> str:
    """The text compared for near duplicates: the question, the answer, or both (joined by a newline)."""
    if field == "both":
        return f"{record.get('question') or ''}\n{record.get('answer') or ''}"
    return str(record.get(field) or "")


def exact_key(record: dict) -> tuple[str, str]:
    # A pair, not a concatenation: ("a b", "c") and ("a", "b c") are different records.
    return normalize(str(record.get("question") or "")), normalize(str(record.get("answer") or ""))


def exact_duplicates(records: Sequence[dict]) -> tuple[list[int], list[Cluster]]:
    """Positions of the first record of each normalized (question, answer), and one cluster per repeated key."""
    first: dict[tuple[str, str], int] = {}
    repeats: dict[int, list[int]] = {}
    for i, record in enumerate(records):
        head = first.setdefault(exact_key(record), i)
        if head != i:
            repeats.setdefault(head, []).append(i)
    clusters = [Cluster(head, tuple(rest), "exact", (1.0,) * len(rest)) for head, rest in repeats.items()]
    return sorted(first.values()), clusters


# -- MinHash signatures --------------------------------------------------------------------------------


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch applies it before the affine permutations."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def signatures(shingle_sets: Sequence[Collection[str]], num_perm: int = 128) -> np.ndarray:
    """One MinHash signature per non-empty set (rows, uint32), equal to `MinHash(num_perm)` updated with each
    shingle's UTF-8 bytes. Each distinct shingle is hashed once: in a corpus most shingles repeat."""
    ids: dict[str, int] = {}
    flat = [ids.setdefault(s, len(ids)) for shingle_set in shingle_sets for s in shingle_set]
    sizes = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=len(shingle_sets))
    if not len(sizes):
        return np.empty((0, num_perm), dtype=np.uint32)
    if not sizes.all():
        raise ValueError("every shingle set must be non-empty (an empty set has no signature)")
    # sha1_hash32: the first 4 bytes of SHA-1, little-endian; one join and one frombuffer for all of them.
    digests = b"".join(hashlib.sha1(s.encode()).digest()[:4] for s in ids)
    mixed = _fmix32(np.frombuffer(digests, dtype="<u4").astype(np.uint32))[np.asarray(flat, dtype=np.int64)]
    a, b = (p.astype(np.uint32) for p in MinHash(num_perm=num_perm, seed=SEED, scheme=SCHEME).permutations)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out = np.empty((len(sizes), num_perm), dtype=np.uint32)
    first = 0
    while first < len(sizes):
        # Whole records per chunk (at least one): reduceat's segments must not straddle two chunks.
        last = max(first + 1, int(np.searchsorted(ends, starts[first] + CHUNK_ROWS, side="right")))
        lo, hi = starts[first], ends[last - 1]
        values = mixed[lo:hi, None] * a + b  # uint32 arithmetic wraps: that is the mod 2^32
        out[first:last] = np.minimum.reduceat(values, starts[first:last] - lo, axis=0)
        first = last
    return out


# -- near duplicates ------------------------------------------------------------------------------------

# MinHashLSH picks its bands (b x r) by weighing false positives against false negatives; ours are cheap (every
# candidate is checked against the threshold with its estimated Jaccard) and a missed duplicate stays in the data,
# so the bands favour recall: at threshold 0.8 with 128 permutations, 14 bands of 9 rows find a pair at Jaccard 0.84
# 96% of the time, where the default 9 bands of 13 find it 63% of the time.
LSH_WEIGHTS = (0.1, 0.9)


def lsh_index(threshold: float, num_perm: int) -> MinHashLSH:
    """An empty MinHashLSH with our bands (the bench's baseline uses the same)."""
    return MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)


def lsh_buckets(sigs: np.ndarray, threshold: float = 0.8) -> dict[int, list[int]]:
    """The LSH index read in bulk: for each row that shares a bucket with another row, its shared buckets (numbered
    across bands), rows ascending. The bands are `MinHashLSH`'s own (its b x r for the threshold, its ranges); a
    bucket holds the rows whose values in the band are equal, as MinHashLSH's byte keys of the band do."""
    lsh = lsh_index(threshold, sigs.shape[1])
    rows_per_band, buckets_per_band = [], []
    numbered = 0
    for start, end in lsh.hashranges:
        band = np.ascontiguousarray(sigs[:, start:end]).view(f"V{sigs.itemsize * (end - start)}").ravel()
        _, bucket, size = np.unique(band, return_inverse=True, return_counts=True)
        rows = np.flatnonzero(size[bucket] > 1)
        rows_per_band.append(rows)
        buckets_per_band.append(bucket[rows] + numbered)
        numbered += len(size)
    rows, buckets = np.concatenate(rows_per_band), np.concatenate(buckets_per_band)
    order = np.argsort(rows, kind="stable")
    shared: dict[int, list[int]] = {}
    for row, bucket in zip(rows[order].tolist(), buckets[order].tolist(), strict=True):
        shared.setdefault(row, []).append(bucket)
    return shared


def near_duplicates(sigs: np.ndarray, threshold: float = 0.8) -> tuple[np.ndarray, list[Cluster]]:
    """Sweep the rows of `sigs` in order: a row is removed when an earlier kept row shares an LSH bucket with it and
    their estimated Jaccard is >= threshold; it joins the cluster of the earliest such row. Returns a boolean
    keep mask and the clusters (positions are row numbers)."""
    n, num_perm = sigs.shape
    keep = np.ones(n, dtype=bool)
    kept_in: dict[int, list[int]] = {}  # kept rows of each shared bucket, in input order
    removed_by: dict[int, list[tuple[int, float]]] = {}
    for row, buckets in lsh_buckets(sigs, threshold).items():  # only rows that share a bucket can be removed
        earlier = sorted({kept for bucket in buckets for kept in kept_in.get(bucket, ())})
        if earlier:
            # MinHash.jaccard: the share of equal values, a float compared with the threshold as datasketch does.
            estimates = np.count_nonzero(sigs[earlier] == sigs[row], axis=1) / num_perm
            hits = np.flatnonzero(estimates >= threshold)
            if len(hits):
                keep[row] = False
                removed_by.setdefault(earlier[hits[0]], []).append((row, float(estimates[hits[0]])))
                continue
        for bucket in buckets:
            kept_in.setdefault(bucket, []).append(row)
    clusters = [
        Cluster(head, tuple(r for r, _ in rows), "near", tuple(j for _, j in rows))
        for head, rows in sorted(removed_by.items())
    ]
    return keep, clusters


class NearDuplicates:
    """Texts one at a time (`flywheel data synth`'s questions as they come), each as a MinHash in an LSH index with
    the bands of `lsh_index`. The candidates LSH finds are checked against the threshold (their estimated
    Jaccard), since banding also returns some pairs below it."""

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.8, num_perm: int = 128):
        self.threshold, self.num_perm = threshold, num_perm
        self._lsh = lsh_index(threshold, num_perm)
        self._hashes: dict[str, MinHash] = {}
        for text in texts:
            self.add(text)

    def add(self, text: str) -> bool:
        """Index `text` and return True, or return False when it is empty or a near-duplicate of one indexed."""
        grams = shingles(text)
        if not grams:
            return False
        signature = MinHash(num_perm=self.num_perm)
        signature.update_batch([g.encode() for g in grams])
        if any(self._hashes[key].jaccard(signature) >= self.threshold for key in self._lsh.query(signature)):
            return False
        key = str(len(self._hashes))
        self._lsh.insert(key, signature)
        self._hashes[key] = signature
        return True


def dedup_records(
    records: Sequence[dict], field: str = "both", threshold: float = 0.8, num_perm: int = 128, ngram: int = 3
) -> DedupResult:
    """Exact duplicates, then near duplicates among what is left. A record whose compared text is empty is never
    a near duplicate: with nothing to compare, all such records would otherwise look alike."""
    if field not in FIELDS:
        raise ValueError(f"field must be one of {FIELDS}, not {field!r}")
    survivors, clusters = exact_duplicates(records)
    sets = {i: shingles(record_text(records[i], field), ngram) for i in survivors}
    rows = [i for i in survivors if sets[i]]
    keep, near = near_duplicates(signatures([sets[i] for i in rows], num_perm), threshold)
    removed = {rows[r] for r in np.flatnonzero(~keep)}
    for c in near:
        clusters.append(Cluster(rows[c.kept], tuple(rows[r] for r in c.removed), "near", c.jaccard))
    clusters.sort(key=lambda c: (c.kept, c.kind))
    return DedupResult(len(records), [i for i in survivors if i not in removed], clusters)


# -- the command ------------------------------------------------------------------------------------------


@click.command("dedup")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path), help="kept records")
@click.option(
    "--clusters", "clusters_path", type=click.Path(dir_okay=False, path_type=Path), help="JSONL, one line per cluster"
)
@click.option("--field", type=click.Choice(FIELDS), default="both", show_default=True, help="text compared for near")
@click.option(
    "--threshold", type=click.FloatRange(0.0, 1.0), default=0.8, show_default=True, help="estimated Jaccard, near"
)
@click.option("--num-perm", type=click.IntRange(16, 1024), default=128, show_default=True, help="MinHash size")
@click.option("--ngram", type=click.IntRange(1, 16), default=3, show_default=True, help="characters per shingle")
def dedup_command(
    input_path: Path,
    out_path: Path,
    clusters_path: Path | None,
    field: str,
    threshold: float,
    num_perm: int,
    ngram: int,
) -> None:
    """Remove exact and near duplicates from the records of INPUT (JSONL), keeping the first of each cluster."""
    started = time.perf_counter()
    try:
        with input_path.open(encoding="utf-8") as f:
            records = read_records(f, str(input_path))
    except RecordError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        result = dedup_records(records, field, threshold, num_perm, ngram)
    except ValueError as exc:  # datasketch: no LSH with two bands or more for this threshold and num_perm
        raise click.ClickException(f"--threshold {threshold} --num-perm {num_perm}: {exc}") from exc
    write_jsonl((records[i] for i in result.kept), out_path)
    if clusters_path is not None:
        write_jsonl((c.to_json() for c in result.clusters), clusters_path)
    table = Table(title=f"dedup {input_path} ({field}, threshold {threshold}, {time.perf_counter() - started:.1f} s)")
    table.add_column("records")
    table.add_column("count", justify="right")
    table.add_row("in", f"{result.records_in:,}")
    table.add_row("exact duplicates removed", f"{result.removed('exact'):,}")
    table.add_row("near duplicates removed", f"{result.removed('near'):,}")
    table.add_row("kept", f"{len(result.kept):,}", style="bold")
    Console().print(table)


if __name__ == "__main__":
    dedup_command()
