"""Remora as the weaviate integration's embedding / rerank provider."""
