"""The demo's defaults, apart from its code so that `drn`'s parser shows them without importing the stack."""

EDGE_HOURS = 6  # the CTR comparison's "first" and "last" hours: this many world hours at each end of the traffic
DAY_HOURS = 24
# simulated span: a day and the comparison's edge, so that the last hours are the first ones' hours of the day a day
# later and the daily cycle (what users click changes over the day) does not decide the comparison
HOURS = float(DAY_HOURS + EDGE_HOURS)
SPEED = 150.0  # world seconds per wall second
CLIENTS = 4  # requests in flight at once
IDLE_HOURS = 0.0  # world hours the pipeline runs on after the traffic stops, before the summary
