from aion.agent import main

main.main()
