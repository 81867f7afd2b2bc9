"""Texts the sidecar tests send: empty, unicode, past max_seq_len, one letter."""

TEXTS = [
    "Sea otters crack shellfish open with rocks they carry.",
    "",
    "Ünïcödé, emoji 🦈 and 中文 text",
    "Vector databases store embeddings next to the documents they describe. " * 30,  # past 256 tokens
    "a",
]
QUERY = "how do sea otters open shellfish"
