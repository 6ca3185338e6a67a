"""Consumers' tools (``segedge-subscribe``): import ``protocol`` only, never the device runtime."""
