"""``python -m saefw.explain``: the command's name users know; it lives in ``saefw/interp/command.py``."""
from saefw.interp.command import main

if __name__ == "__main__":
    main()
