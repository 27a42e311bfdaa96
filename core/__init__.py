"""coinfer: split ("co-") inference of transformer models between an edge device and an edge server.

This package root is the code both halves share (model loading, splitting, pruning, codecs, channel);
the halves themselves live in coinfer.device, coinfer.server and coinfer.planner.
"""
__version__ = "0.1.0"
