from calib.cli import main

main()
