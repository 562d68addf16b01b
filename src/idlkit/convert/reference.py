"""Reference architectures for the converter: the CIFAR ResNet-20 of paper 000 Fig. 7.

ResNet-20 (He et al. 2016, §4.2): a 3x3 convolution with 16 channels, three stages
of three basic blocks (16, 32, 64 channels; the first block of stages 2 and 3
halves the resolution), global average pooling and a linear classifier: 1 + 18 + 1
weight layers. The downsampling shortcut is a 1x1 convolution with batch norm
(option B). ``width`` scales the channels (``width=16`` is the original), for tests.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._validation import check_int

__all__ = ["BasicBlock", "resnet20"]


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` (paper 000 §3.4, Fig. 6).

    Args:
        cin: input channels.
        cout: output channels.
        stride: stride of the first convolution (and of the projection shortcut).

    Examples:
        >>> block = BasicBlock(4, 8, stride=2).eval()
        >>> block(torch.randn(2, 4, 8, 8)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        """The block's output.

        Args:
            x: ``(batch, cin, H, W)`` input.

        Returns:
            ``(batch, cout, H / stride, W / stride)`` output.
        """
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet20(num_classes: int = 10, width: int = 16, in_channels: int = 3, softmax: bool = False
             ) -> nn.Sequential:
    """CIFAR ResNet-20 as an ``nn.Sequential`` (random init, train mode as usual: call ``.eval()``).

    ``softmax=True`` ends with a softmax layer, as in paper 000 Fig. 7.

    Args:
        num_classes: number of outputs.
        width: channels of the first stage (doubled at each of the next two).
        in_channels: input channels.
        softmax: end with a softmax layer.

    Returns:
        The ``nn.Sequential``, input ``(batch, in_channels, H, W)`` (CIFAR: 32 x 32).

    Raises:
        ConfigurationError: a non-positive size.

    Examples:
        >>> net = resnet20(num_classes=10, width=4).eval()
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    for name, value in (("num_classes", num_classes), ("width", width), ("in_channels", in_channels)):
        check_int(name, value, 1)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                               nn.ReLU(inplace=True)]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(3):
            layers.append(BasicBlock(cin, cout, 2 if (stage > 0 and i == 0) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)
