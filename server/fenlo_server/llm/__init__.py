"""LLM providers behind one protocol, and the router that fails over between them.

Nothing here knows about gRPC or the database: the chat pipeline builds an
:class:`~fenlo_server.llm.types.LlmRequest`, asks the router for a stream, and
maps its errors to the API's.
"""
