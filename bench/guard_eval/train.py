"""Train the prompt guard's semantic layer (see ``guard_semantic.py``).

    python bench/guard_eval/train.py            # cross-validate and print
    python bench/guard_eval/train.py --write    # also write guard_model.json

A logistic regression on the ``use-multilingual-v3`` vectors of the labelled
set's injection, jailbreak and exfiltration attacks and its benign messages
(``cases.jsonl``; content-policy cases depend on a workspace's policy and stay
with the rules), the prototypes in ``guard_semantic.py``, and as more benign
examples the ``train`` split of ``bench/intent_eval`` (282 ordinary customer
messages in five languages; its ``test`` split and the questions of
``bench/kb_eval`` are kept out, to measure false positives on). Classes are
weighted equally; L2 regularisation ``L2``; plain gradient descent, so the
result is the same on every run.

Before training it reports 5-fold cross-validation (folds drawn from a hash of
the case id) of the layer on its own, at the chosen threshold. The threshold
is the probability at which the layer blocks; it was chosen on the
cross-validated scores for at most 1% false positives on the benign messages.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import load_cases  # type: ignore[import-not-found]  # noqa: E402

from fenlo_server.knowledge.embedders import UseMultilingualEmbedder  # noqa: E402
from fenlo_server.pipeline.analysis.guard_semantic import (  # noqa: E402
    ATTACKS,
    BENIGN,
    MODEL,
    MODEL_FILE,
    SemanticGuard,
)

L2 = 0.1
ITERATIONS = 6000
LEARNING_RATE = 0.5
THRESHOLD = 0.8
FOLDS = 5
INTENT_MESSAGES = ROOT / "bench" / "intent_eval" / "messages.jsonl"
KB_QUESTIONS = ROOT / "bench" / "kb_eval" / "questions.jsonl"

Array = npt.NDArray[np.float64]


def train(x: Array, y: Array, l2: float = L2) -> tuple[Array, float]:
    """Weights and bias of a class-balanced, L2-regularised logistic regression."""
    weights = np.zeros(x.shape[1])
    bias = 0.0
    positive = y.mean()
    sample = np.where(y == 1, 0.5 / positive, 0.5 / (1 - positive))
    for _ in range(ITERATIONS):
        p = 1 / (1 + np.exp(-(x @ weights + bias)))
        gradient = (p - y) * sample
        weights -= LEARNING_RATE * (x.T @ gradient / len(y) + l2 * weights / len(y))
        bias -= LEARNING_RATE * float(gradient.mean())
    return weights, bias


def intent_messages() -> list[dict[str, str]]:
    lines = INTENT_MESSAGES.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def fold_of(case_id: str) -> int:
    return int(hashlib.sha256(case_id.encode()).hexdigest(), 16) % FOLDS


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write guard_model.json")
    args = parser.parse_args()

    cases = [c for c in load_cases() if c.category != "content"]
    embedder = UseMultilingualEmbedder()
    prepare = SemanticGuard.prepare  # personal data masked, as the layer reads messages

    async def embed(texts: list[str]) -> npt.NDArray[np.float64]:
        vectors = await embedder.embed_documents([prepare(t) for t in texts])
        return np.asarray(vectors, dtype=np.float64)

    x = await embed([c.text for c in cases])
    y = np.array([1.0 if c.is_attack else 0.0 for c in cases])
    attacks = [t for examples in ATTACKS.values() for t in examples]
    customers = [m["text"] for m in intent_messages() if m["split"] == "train"]
    benign = [*BENIGN, *customers]
    xp = await embed([*attacks, *benign])
    yp = np.array([1.0] * len(attacks) + [0.0] * len(benign))

    folds = np.array([fold_of(c.id) for c in cases])
    scores = np.zeros(len(cases))
    for fold in range(FOLDS):
        held = folds == fold
        weights, bias = train(np.vstack([x[~held], xp]), np.concatenate([y[~held], yp]))
        scores[held] = 1 / (1 + np.exp(-(x[held] @ weights + bias)))
    blocked = scores >= THRESHOLD
    detection = float(blocked[y == 1].mean())
    false_positives = int(blocked[y == 0].sum())
    print(
        f"{FOLDS}-fold cross-validation, semantic layer alone at {THRESHOLD}: "
        f"detection {detection:.1%} of {int(y.sum())} attacks, "
        f"false positives {false_positives}/{int((y == 0).sum())}"
    )

    weights, bias = train(np.vstack([x, xp]), np.concatenate([y, yp]))
    held_out = [
        *(m["text"] for m in intent_messages() if m["split"] == "test"),
        *(json.loads(line)["question"] for line in KB_QUESTIONS.read_text().splitlines() if line),
    ]
    xh = await embed(held_out)
    flagged = int(((1 / (1 + np.exp(-(xh @ weights + bias)))) >= THRESHOLD).sum())
    print(
        f"held-out customer messages (intent test split, knowledge-base questions) the "
        f"layer alone would block: {flagged}/{len(held_out)}"
    )
    if args.write:
        MODEL_FILE.write_text(
            json.dumps(
                {
                    "model": MODEL,
                    "threshold": THRESHOLD,
                    "bias": round(bias, 6),
                    "weights": [round(float(w), 6) for w in weights],
                    "trained": {
                        "date": datetime.now(UTC).date().isoformat(),
                        "cases": len(cases),
                        "prototypes": len(attacks) + len(BENIGN),
                        "customer_messages": len(customers),
                        "held_out_false_positives": f"{flagged}/{len(held_out)}",
                        "l2": L2,
                        "cross_validation": {
                            "detection": round(detection, 4),
                            "false_positives": false_positives,
                        },
                    },
                },
                indent=1,
            )
            + "\n",
            encoding="utf-8",
        )
        print(f"wrote {MODEL_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
