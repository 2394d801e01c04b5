from saefw.relations.command import main

main()
