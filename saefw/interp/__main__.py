from saefw.interp.command import main

main()
