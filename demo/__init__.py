"""The built-in demo: :mod:`.run` (its command line is ``jobs/demo.py``, ``fcnrs demo``)."""
