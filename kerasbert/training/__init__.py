"""Training: precision/strategy, optimizer, callbacks, loops, run directory.

Submodules are imported by path; none imports a command module.
"""
