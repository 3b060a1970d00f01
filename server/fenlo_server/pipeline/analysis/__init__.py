"""Pure analysers used by the pipeline steps: no I/O, no gRPC, no database.

Each takes text (and what earlier steps found) and returns plain dataclasses
from ``types.py``; the steps in ``pipeline/steps`` wire them into a turn.
"""
