"""Frames in: camera readers, their liveness, and the slots that hand frames to inference.

Threads: one capture thread per configured camera (``capture``), the frames-in thread
for images other devices send over MQTT (``frames_in``); paho's network thread only
checks sizes and queues. ``slots`` is where they meet the inference thread.
"""
