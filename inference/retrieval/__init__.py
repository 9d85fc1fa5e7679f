"""Retrieval for answers grounded in the shop's own documents: a versioned knowledge base of passages.

    from inference.retrieval import KnowledgeBase, Hit
    kb = KnowledgeBase.open()                  # FLYWHEEL_KB_DIR, default <data_dir>/kb; empty if missing
    hits = kb.search("How long do refunds take?", k=4)
    kb.refresh()                               # reload when `flywheel kb add|update|remove` changed it

Modules: documents (files into text), splitting (text into passages), tokens (BM25 tokens, Chinese included),
models (the embedder and the optional reranker, loaded once per process), index (FAISS + BM25 + fusion),
store (generations on disk, switched atomically), kb (the KnowledgeBase). bench/retrieval.py measures recall and
latency; examples/shop holds the demo shop's policies in English and Chinese, examples/shop_questions.jsonl
questions labelled with the document that answers them.

Importing this package loads neither torch nor faiss: they come with the first knowledge base loaded or searched.
"""

from inference.retrieval.errors import DocumentError, KnowledgeBaseError, UnknownDocumentError
from inference.retrieval.kb import Hit, KnowledgeBase
from inference.retrieval.store import DocumentInfo

__all__ = ["DocumentError", "DocumentInfo", "Hit", "KnowledgeBase", "KnowledgeBaseError", "UnknownDocumentError"]
