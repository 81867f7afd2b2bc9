"""Remora as the qdrant integration's embedding / rerank provider."""
