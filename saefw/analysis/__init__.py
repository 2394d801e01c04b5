"""Reading trained SAEs: feature statistics and top activations from a scan of text, logit lens, the on-disk
feature store, the HTML dashboard, and steering."""
