"""The ``hitl`` command line: ``main`` and one module per command."""

from middleware.cli.main import main

__all__ = ["main"]
