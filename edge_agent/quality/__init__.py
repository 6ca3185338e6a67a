"""Quality: how sure the model is of what it sees; samples of unsure frames for labelling.

Threads: ``samples`` chooses frames on the publish thread (cheap, no I/O) and writes
them on its own ``samples`` writer thread (bounded queue), never on the inference path.
"""
