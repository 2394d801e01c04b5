"""saefw: sparse autoencoders on transformer activations, with every part a plugin."""
import time as _time

IMPORTED = _time.time()  # when saefw was first imported: the wall clock's start where /proc has no process start
__version__ = "0.1.0"
