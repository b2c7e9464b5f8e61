"""Text in: the embedded offline assets (``assets``, with the Shakespeare corpus's text cleaning in
``shakespeare_text``), corpora and their deterministic splits (``corpus``), and tokenization into training
windows with the cached data artifacts every family trains on (``windows``).
"""
