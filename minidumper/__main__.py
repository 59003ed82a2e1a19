from minidumper.cli import main

main()
