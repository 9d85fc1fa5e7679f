"""ROUGE-L between an answer and a reference, for English and Chinese: the score the gate and the benches use.

Google's `rouge-score` computes the longest common subsequence; its default tokenizer keeps only
[a-z0-9] words, so a Chinese answer scores 0 against anything. `MixedTokenizer` lowercases, keeps Latin
words and numbers as tokens and splits CJK text into single characters (Chinese has no spaces; characters
are the usual unit of Chinese ROUGE).

Example:
    rouge_l("Refunds take 5 business days.", "Refunds take five business days")  # F-measure in [0, 1]
"""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer, tokenizers

from retrain.data.text import tokens


class MixedTokenizer(tokenizers.Tokenizer):
    def tokenize(self, text: str) -> list[str]:
        return tokens(text)


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=MixedTokenizer())


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure of `answer` against `reference` (1.0: the same tokens in the same order)."""
    if not answer.strip() or not reference.strip():
        return 1.0 if answer.strip() == reference.strip() else 0.0
    return _scorer().score(reference, answer)["rougeL"].fmeasure
