from saefw.store.command import main

main()
