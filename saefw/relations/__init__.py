"""How features of SAEs at successive hook points relate: decoder cosine, ablation effects, the graph, table and
panel (``python -m saefw.relations``)."""
