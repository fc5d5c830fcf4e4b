"""flowsuite.cli: the ``gen`` command line."""
