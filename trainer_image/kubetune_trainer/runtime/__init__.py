"""Runs a plan: ``launch`` chooses single-process or Ray Train, ``single`` and ``ray_train``
run it, ``context`` assembles the one RunContext a recipe gets, ``layout`` says where a run's
files live."""
