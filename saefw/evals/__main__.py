from saefw.evals.command import main

main()
