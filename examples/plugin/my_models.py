"""An example model of your own (docs/configuration.md): one convolution, pooling, a linear head."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, image):
        return self.head(self.features(image).flatten(1))
