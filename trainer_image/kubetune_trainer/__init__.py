"""kubetune_trainer: the plan contract and the trainer."""
