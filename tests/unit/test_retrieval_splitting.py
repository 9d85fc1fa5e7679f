"""Passages of a document: size, overlap, where they are cut (English and Chinese); BM25 tokens."""

from __future__ import annotations

import pytest

from inference.retrieval.splitting import split_passages
from inference.retrieval.tokens import s_stem, stopwords, tokenize

SENTENCE = "The kettle holds 1.7 liters of water. "  # 38 characters


def test_short_text_is_one_passage_and_whitespace_is_stripped():
    assert split_passages("  \n\nOne short paragraph.\n\n  ", size=100, overlap=10) == ["One short paragraph."]


def test_empty_text_has_no_passage():
    assert split_passages(" \n \n", size=100) == []


@pytest.mark.parametrize("size, overlap", [(0, 0), (100, 100), (100, -1), (50, 80)])
def test_bad_size_or_overlap_is_refused(size, overlap):
    with pytest.raises(ValueError):
        split_passages("text", size=size, overlap=overlap)


def test_every_passage_fits_the_size_and_the_text_is_covered_in_order():
    text = "\n\n".join(f"Paragraph {n}. " + SENTENCE * (n % 5 + 1) for n in range(30))
    passages = split_passages(text, size=150, overlap=30)
    assert all(len(p) <= 150 for p in passages)
    assert len(passages) > 10
    # Without overlap the passages are the text's words, each once, in order.
    plain = split_passages(text, size=150, overlap=0)
    assert " ".join(" ".join(plain).split()) == " ".join(text.split())


def test_paragraphs_are_kept_whole_when_they_fit():
    first, second = "A" * 50 + " first paragraph.", "Second paragraph, " + "b" * 60 + "."
    passages = split_passages(f"{first}\n\n{second}\n\nThird paragraph.", size=120, overlap=20)
    assert passages[0] == first  # the break at 67 of 120 beats any later space
    assert passages[1].startswith("Second paragraph")  # no overlap across a paragraph break


def test_a_long_paragraph_is_cut_at_sentence_ends_with_overlap():
    sentences = [f"Sentence number {n} is right here." for n in range(8)]  # 33 characters each
    passages = split_passages(" ".join(sentences), size=100, overlap=40)
    assert all(p.endswith(".") for p in passages)  # every cut at a sentence end
    for before, after in zip(passages, passages[1:], strict=False):
        # The next passage begins with the previous one's last sentence (34 characters, within the overlap).
        last = before.rsplit(". ", 1)[-1]
        assert after.startswith(last)
    assert " ".join(passages).count("Sentence number") > len(sentences)


def test_no_overlap_repeats_nothing():
    text = SENTENCE * 6
    passages = split_passages(text, size=100, overlap=0)
    assert sum(p.count("kettle") for p in passages) == 6


def test_a_word_is_never_cut_when_a_space_exists():
    text = " ".join(["abcdefghij"] * 30)  # no sentence or clause marks
    passages = split_passages(text, size=45, overlap=12)
    assert all(set(p.split()) == {"abcdefghij"} for p in passages)
    # the overlap starts at a word: the next passage begins with a whole word the previous one ended with
    assert all(len(p) <= 45 for p in passages)


def test_a_word_longer_than_the_size_is_cut_inside_it():
    assert split_passages("x" * 25, size=10) == ["x" * 10, "x" * 10, "x" * 5]


def test_a_heading_stays_with_what_follows_it():
    body = "Some words here. " * 4  # 68 characters
    text = f"{body}\n\n## Returns\n\nYou can return most items within 30 days."
    passages = split_passages(text, size=90, overlap=0)
    assert not passages[0].endswith("## Returns")
    assert passages[1].startswith("## Returns")


def test_chinese_is_cut_at_sentence_ends():
    sentences = ["大部分商品可在签收后30天内退货。", "美国境内退货免费。", "加拿大退货收10美元，从退款中扣除。"]
    sentences.append("换货免费！")
    text = "".join(sentences * 3)
    passages = split_passages(text, size=40, overlap=0)
    assert all(len(p) <= 40 for p in passages)
    assert all(p[-1] in "。！" for p in passages)
    assert "".join(passages) == text


def test_chinese_without_punctuation_is_cut_between_characters_with_overlap():
    text = "中文没有空格所以只能在字之间切开" * 3  # 48 characters, no mark at all
    passages = split_passages(text, size=20, overlap=5)
    assert all(len(p) <= 20 for p in passages)
    assert passages[1].startswith(passages[0][-5:])
    assert passages[-1].endswith("切开")


def test_tokens_latin_words_numbers_and_plurals():
    assert tokenize("Policies: the Glass Kettles cost $49.50, order BL-20931!") == [
        "policy",
        "the",
        "glass",
        "kettle",
        "cost",
        "49.50",
        "order",
        "bl",
        "20931",
    ]


def test_tokens_chinese_words_with_their_shorter_words():
    found = tokenize("你们的电水壶容量多大？")
    assert "电水壶" in found and "水壶" in found and "容量" in found
    assert "？" not in found


@pytest.mark.parametrize(
    "word, stem", [("pans", "pan"), ("policies", "policy"), ("boxes", "boxe"), ("glass", "glass"), ("bus", "bus")]
)
def test_s_stemmer(word, stem):
    assert s_stem(word) == stem


def test_stopwords_are_stemmed_like_tokens():
    words = stopwords()
    assert {"the", "how", "thi", "doe"} <= words  # "this" and "does" as tokenize writes them
    assert "kettle" not in words
