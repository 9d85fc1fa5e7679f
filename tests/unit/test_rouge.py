"""ROUGE-L for English and Chinese answers (rouge-score with a CJK-aware tokenizer)."""

import pytest

from retrain.rouge import MixedTokenizer, rouge_l


@pytest.mark.parametrize(
    "answer, reference, low, high",
    [
        ("Refunds take 5 business days.", "Refunds take 5 business days.", 1.0, 1.0),
        ("refunds TAKE 5 business days", "Refunds take 5 business days.", 1.0, 1.0),  # case and punctuation
        ("Refunds take five business days", "Refunds take 5 business days.", 0.79, 0.81),  # 4 of 5 tokens
        ("We ship to Canada.", "Refunds take 5 business days.", 0.0, 0.0),
        ("退款将在5个工作日内退回。", "退款将在5个工作日内退回。", 1.0, 1.0),
        ("退款将在5个工作日内退回。", "退款需要十个工作日。", 0.4, 0.6),  # characters are the unit
        ("您好", "Hello", 0.0, 0.0),
        ("", "anything", 0.0, 0.0),
        ("", "", 1.0, 1.0),
    ],
)
def test_rouge_l(answer, reference, low, high):
    assert low <= rouge_l(answer, reference) <= high


def test_tokenizer_splits_cjk_into_characters_and_keeps_words():
    assert MixedTokenizer().tokenize("Order #48213 已发货, ETA 3 days") == [
        "order",
        "48213",
        "已",
        "发",
        "货",
        "eta",
        "3",
        "days",
    ]
