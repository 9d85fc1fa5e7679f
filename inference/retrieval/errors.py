"""What the knowledge base refuses, as a small hierarchy: the CLI shows the message, the gateway logs it."""

from __future__ import annotations


class KnowledgeBaseError(Exception):
    """A knowledge-base operation that cannot be done; the message says why."""


class DocumentError(KnowledgeBaseError):
    """A file that cannot become a document: unsupported type, unreadable, or no text in it."""


class UnknownDocumentError(KnowledgeBaseError):
    """A document id the knowledge base does not hold."""
