"""Training: model families and checkpoints (loading, saving, records, cards), the one training loop, unlearning
losses and removal data. Imports `unbackdoor.data` and `unbackdoor.running`."""
