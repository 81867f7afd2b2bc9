"""Remora as the lancedb integration's embedding / rerank provider."""
