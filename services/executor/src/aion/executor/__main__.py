from aion.executor import main

main.main()
