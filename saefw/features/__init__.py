"""Reading features: the scan of text, top activations, quantiles, firing statistics, logit lens, the feature
store, the HTML dashboard (``python -m saefw.features``) and steering (``python -m saefw.steer``)."""
