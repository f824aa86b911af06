"""Feedback from served traffic: replay logged requests through a version (``replay``),
pick logged images to label (``select``), and find similar crops (``embeddings``,
``index``). All of them read request logs through ``serving.log_reader``.
"""
