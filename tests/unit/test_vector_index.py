"""The in-process vector index: exact below its threshold, HNSW above it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from fenlo_server.knowledge.vector_index import VectorIndex


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:  # type: ignore[type-arg]
    vectors = np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_small_indexes_search_exactly_and_large_ones_approximately() -> None:
    vectors = unit_vectors(300)
    exact = VectorIndex(vectors, ann_threshold=1_000)
    approximate = VectorIndex(vectors, ann_threshold=100)
    approximate.wait_ready()
    assert not exact.approximate
    assert approximate.approximate
    query = vectors[7]
    assert exact.search(query, 3)[0][0] == 7
    assert approximate.search(query, 3)[0][0] == 7
    assert abs(approximate.search(query, 1)[0][1] - 1.0) < 1e-2


def test_onnxruntime_still_loads_after_an_hnsw_index_was_built() -> None:
    # usearch first and onnxruntime second used to kill the process (SIGSEGV).
    code = (
        "import numpy as np\n"
        "from fenlo_server.knowledge.vector_index import VectorIndex\n"
        "v = np.eye(64, dtype=np.float32)\n"
        "index = VectorIndex(v, ann_threshold=10)\n"
        "index.wait_ready()\n"
        "assert index.approximate\n"
        "import onnxruntime\n"
        "print(onnxruntime.get_device())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CPU" in done.stdout
