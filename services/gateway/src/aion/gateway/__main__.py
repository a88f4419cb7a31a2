from aion.gateway import main

main.main()
