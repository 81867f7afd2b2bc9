"""Remora as the chroma integration's embedding / rerank provider."""
