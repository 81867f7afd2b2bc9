"""A deterministic set of test texts: edge cases plus prose of every length up to ~600 tokens."""

from __future__ import annotations

import random

SENTENCES = [
    "Vector databases store embeddings next to the documents they describe.",
    "A small encoder turns each passage into a fixed-size vector.",
    "Rerankers read the query and a candidate together and return a relevance score.",
    "The sidecar runs in the same pod as the database and answers over loopback.",
    "Sea otters wrap themselves in kelp so they do not drift while sleeping.",
    "In 1969 the first message was sent between two computers on a research network.",
    "Tokenizers split rare words into pieces; common words stay whole.",
    "The recipe calls for two cups of flour, a pinch of salt and 250 ml of water.",
    "Attention compares every token with every other token in the same sequence.",
    "Padding wastes compute, so Remora packs sequences back to back.",
    "Mount Everest is 8,849 metres tall, according to the survey published in 2020.",
    "She said: \"it's not about speed alone -- it's about never dropping a request.\"",
    "Cache misses dominate when the working set no longer fits in L2.",
    "Hybrid search mixes keyword scores with vector similarity.",
    "Birds migrate thousands of kilometres, guided by the sun, the stars and magnetism.",
    "The court adjourned until Monday; the verdict is expected next week.",
]

EDGE_CASES = [
    "",
    " ",
    "\n\t  \r\n",
    "a",
    "?",
    "Ünïcödé àccénts ñ ß ø å",
    "emoji only 🦈🐟🌊🚀👩‍💻🏳️‍🌈",
    "中文文本测试：向量数据库与小模型。",
    "日本語のテキストと한국어 텍스트",
    "مرحبا بالعالم — نص عربي",
    "Ελληνικά και кириллица вместе",
    "def encode(texts: list[str]) -> np.ndarray:\n    return engine.encode('m', texts)  # code",
    "SELECT id, vector FROM docs WHERE score > 0.5 ORDER BY score DESC LIMIT 10;",
    '{"json": [1, 2, 3], "nested": {"key": null}}',
    "https://example.com/path?query=1&other=two#fragment",
    "supercalifragilisticexpialidocious" * 3,
    "zero\u200bwidth\u200bjoiners and\u00a0non-breaking spaces",
    "control\x00chars\x07inside\x1b[0m",
    "!!!???...,,,;;;:::",
    "1234567890 3.14159 2.71828 1e-9 -42",
    "MiXeD CaSe ShOuTiNg AND lowercase",
    "tab\tseparated\tvalues\nand\nnewlines",
]


def texts(count: int = 320, *, seed: int = 7, max_words: int = 470) -> list[str]:
    """Edge cases, then prose whose length sweeps 0..max_words words (~0..600 tokens)."""
    rng = random.Random(seed)
    out = list(EDGE_CASES)
    rest = count - len(out)
    for index in range(rest):
        target = round(max_words * index / max(rest - 1, 1))
        words: list[str] = []
        while len(words) < target:
            words.extend(rng.choice(SENTENCES).split())
        text = " ".join(words[:target])
        # Sprinkle non-ASCII into some long texts so truncation meets multi-piece tokens too.
        if index % 9 == 4:
            text += " 🦈 中文 ünïcödé"
        out.append(text)
    return out
