"""Inference: the compiled model, the steps around it, and the infer/publish threads.

Threads: the inference thread (``pipeline``: takes frames, submits them to OpenVINO's
async queue) and the publish thread (reorders completions per camera, encodes and hands
messages to MQTT); OpenVINO's own callback threads only record results. ``engine``
owns the compiled model; ``ovcompat`` hides the differences between OpenVINO releases.
"""
