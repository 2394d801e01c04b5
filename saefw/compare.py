"""``python -m saefw.compare``: the command's name users know; it lives in ``saefw/sweeps/command.py``."""
from saefw.sweeps.command import main

if __name__ == "__main__":
    main()
