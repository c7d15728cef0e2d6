"""What every recipe trains with: HF Trainer callbacks, attempt-fenced checkpoints, hardware and
precision, DeepSpeed configuration."""
