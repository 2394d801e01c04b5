"""``python -m saefw.steer``: the command's name users know; it lives in ``saefw/features/steer.py``."""
from saefw.features.steer import main

if __name__ == "__main__":
    main()
