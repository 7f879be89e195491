from capsuled.cli.server import main

main()
