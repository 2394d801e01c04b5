from saefw.sweeps.command import main

main()
