"""Words for keyword matching: folded (lower-case, no accents), without stop
words, lightly stemmed. Used by BM25 and by the offline provider, in English,
Spanish, French, German and Portuguese alike."""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    """
    a an and are as at be but by can could do does did for from had has have how i if in
    into is it its me my no not of on or our please so than that the their them then there
    these they this to too us was we were what when where which who whom why will with would
    you your yours about any also just may might must shall should tell know want need get
    de la el los las un una unos unas y o que en por para con es son del al lo se su sus
    le les des du et ou est sont pour avec dans sur une au aux ce ces qui quoi comment
    der die das ein eine und oder ist sind mit fur von zu im den dem des wie was wo
    um uma os as do da dos das no na nos nas em com por
    """.split()
)


def fold(text: str) -> str:
    """Lower-case without accents, so `Öffnungszeiten` matches `offnungszeiten`."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> list[str]:
    """The words that carry meaning, folded and stemmed, in order."""
    return [stem(w) for w in _WORD.findall(fold(text)) if w not in STOPWORDS and len(w) > 1]
