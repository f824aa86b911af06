"""The DAG (``pipeline``), its settings and presets, its runners and the ``sightline`` CLI."""
