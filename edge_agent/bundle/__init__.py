"""The model bundle: reading and verifying its manifest and files before anything loads.

Runs on the main thread at start and on the reload thread; pure file I/O and checks.
``schema`` is the stdlib subset of JSON Schema the manifest (and tests) validate with.
"""
