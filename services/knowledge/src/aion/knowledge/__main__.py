from aion.knowledge import main

main.main()
