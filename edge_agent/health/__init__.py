"""Health: the agent's states and health file, the watchdog, sd_notify, counters, pacing.

Threads: the main thread ticks ``state`` and the ``watchdog``; every other thread only
reports reasons and counts (``stats``) and never blocks on file I/O here.
"""
