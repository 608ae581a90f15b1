"""Training loop, schedules, checkpoints, logging and distributed set-up, shared by all tasks."""
