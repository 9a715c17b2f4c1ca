from netwrap.cli import main

main()
