"""Starting instances before requests ask: autoscaling, schedules, fixed and adaptive pre-warm."""
