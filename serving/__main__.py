"""``python -m serving ...`` runs ``sightline serve``."""

from serving.cli import serve

if __name__ == "__main__":
    serve(prog_name="python -m serving")
