"""Training: one loop for pretraining (FIM, packed code), SFT and DPO; LoRA; checkpoints; distributed runs."""
