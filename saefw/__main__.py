from saefw.training.command import main

main()
