"""Small research models from the seeds: one model per file, plus the DINO backbones they share."""
