"""Runnable demos behind the `odedepth` command (see :mod:`odedepth.cli`)."""
