from aion.router import main

main.main()
