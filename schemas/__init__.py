"""The curated TFDV schema and the rules that draft one."""

import os

DEFAULT_SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "schema.pbtxt")
