from perftune.cli.app import main

main()
