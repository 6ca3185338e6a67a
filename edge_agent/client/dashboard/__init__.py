"""``segedge-dashboard``: a live fleet page in the browser, on the ops side.

One card per device and camera (state and reason, fps, latency, model and device,
quality when present, the latest overlay), pushed to the page with server-sent events;
read-only unless started with an operator identity (``--operator``). Standard library
HTTP server and paho only: no web framework (docs/dashboard.md).
"""
