"""saefw: sparse autoencoders on transformer activations, with every part a plugin."""
__version__ = "0.1.0"
