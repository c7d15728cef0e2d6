"""Evaluation: the measures (``measures``), the metric suite a spec asks for and the export
gate (``suite``, ``gate``), reward sources (``rewards``), the LLM judge (``judge``) and the code
sandbox (``sandbox``).

Kept light on purpose: importing this package (and ``gate``, ``judge``, ``sandbox``,
``measures``) never imports torch, so torch-free services can use them.
"""
