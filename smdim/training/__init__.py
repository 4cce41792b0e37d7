"""Training: loop, optimizer and schedule, EMA, resume, distributed."""
