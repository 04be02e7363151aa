"""DRN.md's schedule, in minutes, defined once: the command line, the stack, the flows and the in-process loop import
it (this module imports nothing, so `drn --help` stays fast)."""

MINOR_EVERY_MIN = 30.0  # T_D: a minor update (the end of an exploration round)
MAJOR_EVERY_MIN = 60.0  # T_R: a major update (replay training)
