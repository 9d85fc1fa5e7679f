"""Demo customer-service domain: Brightleaf, a fictional home & kitchen shop (English and Chinese).

Reads `shop.jsonl` beside this package; see `retrain.demo.domain` for the format, roles and splits.
"""

from retrain.demo.domain import (
    DOMAIN_FILE,
    QA,
    Intent,
    load_domain,
    loop_sets,
    sft_splits,
    split_questions,
    to_sft_rows,
    write_jsonl,
)

__all__ = [
    "DOMAIN_FILE",
    "QA",
    "Intent",
    "load_domain",
    "loop_sets",
    "sft_splits",
    "split_questions",
    "to_sft_rows",
    "write_jsonl",
]
