"""``python -m pipelines.cli``: the ``sightline`` command from this source tree."""

from pipelines.cli import main

main()
