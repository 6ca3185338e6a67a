"""What agent and consumers share: message dataclasses, mask codecs, overlays, schemas.

No threads, no paho, no openvino: the reference subscriber, dashboards and the agent all
import from here (``encoding.decode`` turns a mask message back into a class map).
"""
