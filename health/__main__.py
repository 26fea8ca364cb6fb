from health.cli import main

main()
