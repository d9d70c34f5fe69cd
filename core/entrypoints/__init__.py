"""Entry points: the front ends a user drives, each on top of the API.

``cli/`` (Typer), ``server/`` (FastAPI; request models in ``protocol``), ``jobs`` (corpus
jobs; file formats in ``encodings``), ``bench/`` and ``integrations/`` (Ray).

May import: every other layer. Nothing below imports it.
"""
