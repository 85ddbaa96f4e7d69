"""Serving (an app): the page, /predict and the Open Inference Protocol (v2), with the batcher
that runs concurrent requests as one forward pass."""
