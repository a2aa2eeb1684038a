"""Stage `training` (not in the registry): judges what a real `fit` recorded, after it ran: the
training monitors (a `MonitorLog`) and the rank checks (a `RankRecord`, several processes)."""
