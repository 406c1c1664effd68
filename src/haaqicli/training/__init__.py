"""Training the models: `train` (teacher training, distillation, evaluation), `objectives` (the losses
beside MSE) and `ablation` (`haaqi ablate`). The corpus and labels they read are in `haaqicli.data`."""
