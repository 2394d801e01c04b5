"""Saved SAEs: saefw run directories and SAELens directories, both ways."""
