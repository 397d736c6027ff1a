"""The command line: :mod:`bridge.cli.main` dispatches to one module per command."""
