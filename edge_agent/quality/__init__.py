"""Quality: how sure the model is of what it sees, per frame and over a window, against
the bundle's reference; samples of unsure frames for labelling.

No openvino, no paho: ``figures`` is the per-frame
rule (the graph computes the same figures beside the class decision, ovcompat), ``drift``
the rolling window, the statistic against the manifest's ``reference`` and the state
machine (warming_up, ok, drifting, no_reference) with hysteresis. The publish thread
adds each inferred frame's figures to its camera's window; the main thread evaluates
the windows once a second and publishes the retained ``quality`` topic. ``samples``
chooses frames on the publish thread (cheap, no I/O) and writes them on its own
``samples`` writer thread (bounded queue), never on the inference path.
"""
