"""The commands as library calls, one module each (run, compare, sensitivity, calibrate, build,
bench, cache): each resolves its inputs through `calib.session`, does its work with the layers
below, and writes its report through its own module in `calib.report`. The CLI only parses options
and prints."""
