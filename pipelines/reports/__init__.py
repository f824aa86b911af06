"""What happened in a run, for people and machines: summaries and lineage from ML Metadata
(``runs``), terminal tables (``terminal``), and HTML + JSON reports of an evaluation
(``evaluation``) and of a span's data and drift (``data``), sharing ``html``."""
