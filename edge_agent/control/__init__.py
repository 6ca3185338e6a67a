"""Commands: pure command rules, the router, the commands service, Home Assistant discovery.

Threads: the commands thread (``service``) applies what paho's thread queued; ``rules``
and ``router`` are pure and unit-tested without a broker.
"""
