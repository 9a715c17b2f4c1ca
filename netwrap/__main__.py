from netwrap.cli.main import main

main()
