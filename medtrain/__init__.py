"""medtrain: config-driven training, evaluation and deployment of deep-learning models on medical images."""

__version__ = "0.3.0.dev0"
