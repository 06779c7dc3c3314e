"""Training: TrainConfig, the loop over an Objective, schedules, checkpoints, metrics and plots,
distributed set-up. Imports text, model and infer (samples at evaluation)."""
