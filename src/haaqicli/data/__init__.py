"""Training data: corpus packages, degradations, audiogram sampling, manifest and labels."""
