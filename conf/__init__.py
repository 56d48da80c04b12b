"""medtrain's config groups (Hydra), shipped inside the package as `medtrain.conf`."""
