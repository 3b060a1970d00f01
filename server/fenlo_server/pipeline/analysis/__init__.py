"""Pure analysers used by the pipeline steps: no I/O, no gRPC, no database.

Each takes text (and what earlier steps found) and returns plain dataclasses
from ``types.py``; the steps in ``pipeline/steps`` wire them into a turn.
"""


def forget_texts() -> None:
    """Clear the analysers' caches that hold workspace texts: knowledge-base passages
    (answer quality), product names (entities) and blocked topics (the guard)."""
    from fenlo_server.pipeline.analysis import entities, guard, quality

    entities._product_matcher.cache_clear()
    guard._topic_pattern.cache_clear()
    quality._passage_words.cache_clear()
