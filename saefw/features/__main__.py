from saefw.features.command import main

main()
