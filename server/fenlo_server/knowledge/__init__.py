"""The knowledge base's logic: parsing, chunking, embedding, indexing, hybrid search.

Nothing here knows about gRPC or the database models: documents come in as
bytes, passages go out as dataclasses, and persistence goes through the small
:class:`~fenlo_server.knowledge.types.KnowledgeStore` protocol that ``storage/``
implements.
"""
