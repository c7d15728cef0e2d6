"""Evaluation: the measures (``measures``), the metric suite a spec asks for and the export
gate (``suite``, ``gate``), reward sources (``rewards``), the LLM judge (``judge``), the code
sandbox (``sandbox``) and the uncertainty of every figure (``statistics``).

Kept light on purpose: importing this package (and ``gate``, ``judge``, ``sandbox``,
``measures``, ``statistics``) never imports torch, so torch-free services can use them.
"""
