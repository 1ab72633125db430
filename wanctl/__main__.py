from wanctl.cli import main

main()
