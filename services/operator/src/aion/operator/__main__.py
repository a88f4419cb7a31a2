from aion.operator import main

main.main()
