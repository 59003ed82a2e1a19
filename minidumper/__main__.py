from minidumper.entry import main

main()
