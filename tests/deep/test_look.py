"""The queue between the request path and the worker, with a stand-in embedder (the
worker itself is tested with the real model in ``test_worker.py``)."""

from __future__ import annotations

import asyncio

from middleware.learning.deep import DeepLook, DeepModel, Embedder


class WordEmbedder(Embedder):
    """Three dimensions: helpful words, unhelpful words, everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(texts)
        out = []
        for text in texts:
            words = text.lower().split()
            out.append(
                [
                    sum(w in {"monday", "arrives"} for w in words) + 0.01,
                    sum(w in {"sorry", "know"} for w in words) + 0.01,
                    1.0,
                ]
            )
        return out


async def test_the_least_certain_go_first_and_the_most_certain_are_skipped() -> None:
    embedder = WordEmbedder()
    look = DeepLook(embedder=embedder, model=DeepModel(), queue_size=3)
    for reply_id, live in [("a", 0.9), ("b", 0.45), ("c", 0.2), ("d", 0.55)]:
        look.submit(reply_id, "q", "text", live)
    assert look.skipped == 1  # "a", the most certain, made room
    results = await look.step()
    assert [r.reply_id for r in results] == ["b", "d", "c"]
    assert all(r.score is None and r.combined == r.live for r in results)


async def test_a_held_reply_waits_for_its_score_up_to_the_limit() -> None:
    look = DeepLook(embedder=WordEmbedder(), model=DeepModel())
    assert await look.wait("unknown", 1.0) is None
    look.submit("h", "q", "It arrives on Monday", 0.3)
    waiting = asyncio.create_task(look.wait("h", 5.0))
    await asyncio.sleep(0)
    await look.step()
    result = await waiting
    assert result is not None and result.reply_id == "h" and result.live == 0.3
    look.submit("slow", "q", "text", 0.3)
    assert await look.wait("slow", 0.01) is None  # nobody ran the look in time


async def test_labels_teach_the_second_model() -> None:
    look = DeepLook(embedder=WordEmbedder(), model=DeepModel(ring_size=100, neighbours=5))
    for i in range(300):
        helpful = i % 2 == 0
        text = "it arrives monday" if helpful else "sorry i do not know"
        assert await look.learn(f"l{i}", "q", text, 0.5, helpful, 1.0)
    look.submit("g", "q", "arrives monday", 0.5)
    look.submit("b", "q", "sorry no", 0.5)
    scores = {r.reply_id: r.score for r in await look.step()}
    assert scores["g"] is not None and scores["b"] is not None
    assert scores["g"] > 0.7 > 0.3 > scores["b"]
    # a label of a reply the look scored is learned from what it kept, not embedded again
    calls = len(look.embedder.calls)  # type: ignore[attr-defined]
    assert await look.learn("g", "q", "arrives monday", 0.5, True, 1.0)
    assert len(look.embedder.calls) == calls  # type: ignore[attr-defined]
