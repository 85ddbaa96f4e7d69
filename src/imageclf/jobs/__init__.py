"""Whole jobs the command line runs (an app): the demo, evaluate and calibrate over a data
set, the model card and the Hub."""
