"""The broker connection: truthful connection state, last will, bounded outbound queues.

Threads: paho's network thread (callbacks only record and hand over) and the publish
calls of the pipeline's publish thread and the main thread.
"""
