"""The command runner and what every stage shares: Hydra apps and their errors, the console, the wall clock, the
summary, W&B settings, devices, atomic files, the allocator. Imports no other saefw folder."""
