"""The knowledge base: versions, generations seen by a second instance, search over the bundled shop, fusion,
the reranker's code path, searches from threads. The embedding model (bundled MiniLM) loads once per process."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from inference.retrieval import Hit, KnowledgeBase, UnknownDocumentError
from inference.retrieval.errors import KnowledgeBaseError
from inference.retrieval.examples import SHOP_DIR as SHOP
from inference.retrieval.index import RRF_K, reciprocal_rank_fusion
from inference.retrieval.kb import RERANK_DEPTH
from inference.retrieval.settings import RetrievalSettings
from inference.retrieval.store import CURRENT


def settings(**overrides) -> RetrievalSettings:
    defaults = {"kb_embedding_model": None, "kb_reranker_model": None, "kb_multilingual_embedding": False}
    return RetrievalSettings(_env_file=None, **{**defaults, **overrides})


@pytest.fixture(scope="module")
def shop_kb(tmp_path_factory) -> KnowledgeBase:
    kb = KnowledgeBase.open(tmp_path_factory.mktemp("shop") / "kb", settings())
    kb.add([SHOP])
    return kb


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- fusion ----------------------------------------------------------------------------------------------------


def test_reciprocal_rank_fusion_arithmetic():
    fused = dict(reciprocal_rank_fusion([[1, 2, 3], [3, 1]]))
    assert RRF_K == 60
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[2] == pytest.approx(1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert [item for item, _ in reciprocal_rank_fusion([[1, 2, 3], [3, 1]])] == [1, 3, 2]


def test_fusion_prefers_agreement_and_breaks_ties_by_best_rank_then_item():
    # first in one ranking only (1/61) loses to second in both (2/62)
    assert reciprocal_rank_fusion([[7, 5], [9, 5]])[0][0] == 5
    assert [item for item, _ in reciprocal_rank_fusion([[4, 8], [3, 8]], k=1)] == [8, 3, 4]
    assert reciprocal_rank_fusion([]) == []


# -- versions and generations ---------------------------------------------------------------------------------


def test_a_missing_directory_is_an_empty_knowledge_base(tmp_path: Path):
    kb = KnowledgeBase.open(tmp_path / "none", settings())
    assert (kb.documents(), kb.search("anything"), kb.refresh(), kb.generation) == ([], [], False, 0)
    assert not (tmp_path / "none").exists()


def test_versions_generations_and_a_second_instance(tmp_path: Path):
    docs, kb_dir = tmp_path / "docs", tmp_path / "kb"
    write(docs / "kettles.md", "# Kettles\n\nThe Glass Kettle holds 1.7 liters.\n")
    write(docs / "lamps.txt", "The Arlo lamp has three brightness levels.\n")
    writer = KnowledgeBase.open(kb_dir, settings())
    reader = KnowledgeBase.open(kb_dir, settings())
    embedded: list[int] = []

    added = writer.add([docs], progress=lambda done, total: embedded.append(total))
    assert [(i.document, i.version, i.passages, i.title) for i in added] == [
        ("kettles.md", 1, ("kettles.md#1",), "Kettles"),
        ("lamps.txt", 1, ("lamps.txt#1",), "lamps"),
    ]
    assert writer.generation == 1 and (kb_dir / CURRENT).read_text().strip() == "1"
    assert reader.search("kettle") == []
    assert reader.refresh() is True and reader.refresh() is False
    assert reader.search("How much water does the kettle hold?", k=1)[0].document == "kettles.md"

    # unchanged content: same version, no new generation, nothing embedded
    embedded.clear()
    assert [i.version for i in writer.update([docs / "kettles.md"])] == [1]
    assert writer.generation == 1 and embedded == [] and reader.refresh() is False

    # changed content: version 2, only its passages embedded, the other document untouched
    write(docs / "kettles.md", "# Kettles\n\nThe Glass Kettle holds 1.5 liters and costs $49.\n")
    [info] = writer.update([docs / "kettles.md"], progress=lambda done, total: embedded.append(total))
    assert (info.version, embedded, writer.generation) == (2, [1], 2)
    assert {i.document: i.version for i in writer.documents()} == {"kettles.md": 2, "lamps.txt": 1}
    assert reader.refresh() is True
    [hit] = reader.search("$49", k=1, mode="bm25")
    assert (hit.document, hit.version, hit.passage) == ("kettles.md", 2, "kettles.md#1")
    assert "1.5 liters" in hit.text

    # the same content split differently keeps its version
    [info] = writer.update([docs / "kettles.md"], chunk_size=30, overlap=5)
    assert info.version == 2 and len(info.passages) > 1 and info.chunk_size == 30
    # ... and keeps that splitting when updated without one
    generation = writer.generation
    assert writer.update(docs / "kettles.md") == [info] and writer.generation == generation

    # remove, then add again: versions go on, so a version names one content for good
    assert [i.document for i in writer.remove(["kettles.md"])] == ["kettles.md"]
    assert [i.document for i in writer.documents()] == ["lamps.txt"]
    assert reader.refresh() and all(h.document == "lamps.txt" for h in reader.search("kettle liters", k=5))
    assert writer.add([docs / "kettles.md"])[0].version == 3

    # generations: add, update, split again, remove, add (an unchanged update wrote none); the current one and
    # the one before stay on disk
    assert sorted(p.name for p in kb_dir.iterdir() if p.is_dir()) == ["gen-000004", "gen-000005"]


def test_unknown_documents_change_nothing(tmp_path: Path):
    write(tmp_path / "docs" / "a.md", "alpha text")
    kb = KnowledgeBase.open(tmp_path / "kb", settings())
    kb.add([tmp_path / "docs"])
    with pytest.raises(UnknownDocumentError, match="b.md"):
        kb.remove(["a.md", "b.md"])
    write(tmp_path / "docs" / "b.md", "beta text")
    with pytest.raises(UnknownDocumentError, match="unknown document\\(s\\): b.md"):
        kb.update([tmp_path / "docs"])
    assert [i.document for i in kb.documents()] == ["a.md"] and kb.generation == 1


def test_one_bad_file_adds_nothing(tmp_path: Path):
    write(tmp_path / "docs" / "a.md", "alpha text")
    write(tmp_path / "docs" / "empty.md", "")
    kb = KnowledgeBase.open(tmp_path / "kb", settings())
    with pytest.raises(KnowledgeBaseError, match="empty.md: no text"):
        kb.add([tmp_path / "docs"])
    with pytest.raises(KnowledgeBaseError, match="overlap"):
        kb.add([tmp_path / "docs" / "a.md"], chunk_size=100, overlap=100)
    assert kb.documents() == [] and not (tmp_path / "kb" / CURRENT).exists()


# -- search over the bundled shop ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "question, document",
    [
        ("How much does express shipping cost?", "en/shipping.md"),
        ("Are your sheets made of organic cotton?", "en/products.md"),
        ("How do I make a warranty claim?", "en/warranty.md"),
        ("Can I pay in four installments?", "en/payment.md"),
        ("退货是免费的吗？", "zh/returns.md"),
        ("怎么重置密码？", "zh/account.md"),
        ("你们包邮吗？", "zh/shipping.md"),
        ("水壶保修多久？", "zh/warranty.md"),
    ],
)
def test_hybrid_search_finds_the_page(shop_kb: KnowledgeBase, question: str, document: str):
    hits = shop_kb.search(question, k=3)
    assert hits[0].document == document
    assert all(isinstance(h, Hit) and h.version == 1 and h.passage.startswith(h.document + "#") for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_each_mode_and_its_scores(shop_kb: KnowledgeBase):
    dense = shop_kb.search("When is my card charged?", k=2, mode="dense")
    assert dense[0].document == "en/payment.md" and 0 < dense[0].score <= 1  # a cosine
    [exact] = shop_kb.search("14.95", k=1, mode="bm25")  # an exact price: one token
    assert exact.document in ("en/shipping.md", "zh/shipping.md") and exact.score > 1
    [hybrid] = shop_kb.search("When is my card charged?", k=1)
    assert hybrid.score <= 2 / (RRF_K + 1)  # the most a passage can score in two rankings
    assert hybrid.title == "Payment" and "charged when your order ships" in hybrid.text


def test_chinese_questions_are_ranked_by_bm25_alone_unless_the_model_reads_chinese(shop_kb: KnowledgeBase):
    question = "可以用什么方式付款？"
    bm25 = [h.passage for h in shop_kb.search(question, k=5, mode="bm25")]
    assert [h.passage for h in shop_kb.search(question, k=5)] == bm25
    multilingual = KnowledgeBase.open(shop_kb.path, settings(kb_multilingual_embedding=True))
    assert [h.passage for h in multilingual.search(question, k=5)] != bm25


def test_search_edge_cases(shop_kb: KnowledgeBase):
    assert shop_kb.search("   ") == [] and shop_kb.search("returns", k=0) == []
    assert len(shop_kb.search("returns", k=500, mode="dense")) == sum(len(i.passages) for i in shop_kb.documents())
    with pytest.raises(ValueError, match="unknown search mode"):
        shop_kb.search("returns", mode="sparse")


def test_searches_from_threads_while_another_process_writes(shop_kb: KnowledgeBase, tmp_path: Path):
    kb_dir = tmp_path / "kb"
    write(tmp_path / "docs" / "a.md", "Standard shipping takes 3 to 5 business days.")
    writer = KnowledgeBase.open(kb_dir, settings())
    writer.add([tmp_path / "docs"])
    reader = KnowledgeBase.open(kb_dir, settings())
    errors: list[BaseException] = []
    found: list[str] = []

    def search() -> None:
        try:
            for _ in range(10):
                found.extend(h.document for h in reader.search("How long does shipping take?", k=1))
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for thread in threads:
        thread.start()
    for n in range(3):
        write(tmp_path / "docs" / "a.md", f"Standard shipping takes 3 to 5 business days (edition {n}).")
        writer.update([tmp_path / "docs" / "a.md"])
        reader.refresh()
    for thread in threads:
        thread.join()
    assert errors == [] and found == ["a.md"] * 40
    assert reader.documents()[0].version == 4


# -- reranker -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> Path:
    """A cross-encoder with random weights and MiniLM's vocabulary, built here: none is shipped, none downloaded."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from inference.retrieval.settings import RetrievalSettings

    model_dir = tmp_path_factory.mktemp("cross-encoder")
    vocab = RetrievalSettings(_env_file=None, kb_embedding_model=None).embedding_model_dir / "vocab.txt"
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def test_the_reranker_reorders_the_best_passages_by_its_own_scores(shop_kb: KnowledgeBase, tiny_cross_encoder: Path):
    from sentence_transformers import CrossEncoder

    question = "Can I return a used pan?"
    reranked = KnowledgeBase.open(shop_kb.path, settings(kb_reranker_model=tiny_cross_encoder))
    hits = reranked.search(question, k=5)
    candidates = {h.passage for h in shop_kb.search(question, k=RERANK_DEPTH)}
    assert len(hits) == 5 and {h.passage for h in hits} <= candidates
    expected = CrossEncoder(str(tiny_cross_encoder), device="cpu").predict([(question, h.text) for h in hits])
    assert [h.score for h in hits] == pytest.approx([float(s) for s in expected], rel=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_a_model_setting_that_is_no_model_directory_is_an_error(shop_kb: KnowledgeBase, tmp_path: Path):
    kb = KnowledgeBase.open(shop_kb.path, settings(kb_reranker_model=tmp_path / "nothing"))
    with pytest.raises(KnowledgeBaseError, match="not a model directory"):
        kb.search("returns")
