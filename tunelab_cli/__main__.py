from tunelab_cli.main import main

main()
