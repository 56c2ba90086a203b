from visionlab.cli import main

main()
