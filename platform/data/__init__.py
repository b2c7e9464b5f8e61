"""Text in: the embedded offline assets (``assets``), corpora and their deterministic splits (``corpus``), and
tokenization into training windows with the cached data artifacts every family trains on (``windows``).
"""
