"""Consumers' tools (``segedge-subscribe``, ``segedge-dashboard``): import ``protocol`` (and
the id rule of ``config``) only, never the device runtime."""
