from saefw.cli import main

main()
