"""Console output of every `maskunet` command, owned in one place.

session.py         one command's console: -v/-q/--json, log file, progress, summary, exit codes
logfile.py         library output to the log file; our own warnings to the terminal
progress.py        stages and steps; plain periodic lines when stdout is not a terminal
live.py            the live display on a terminal (rich)
summary.py         the closing summary (text, or the --json object)
errors.py          exit codes 0 / 1 / 2 and one-line errors
train_progress.py  training progress from Ray Train's rank 0 to the driver's display
"""
