"""Several trained networks of one task as one network (`ModelAverage`): what a cross-validation's
fold ensemble saves in its `checkpoints/best.pt`, so that it predicts, serves and exports like any
run.

The members' outputs are averaged where averaging means something: class probabilities (softmax
or sigmoid), or values in the task's units. The average comes out as outputs of the same kind as
one member's, so the task's own postprocessing applies unchanged: the log of the mean softmax
(whose softmax is the mean), the logit of the mean sigmoid, or the mean value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medtrain.data.tabular import member_map
from medtrain.errors import ConfigError
from medtrain.models import input_keys

RULES = ("softmax", "sigmoid", "mean")


def mean_class_logits(stacked: torch.Tensor, sigmoid_channels: int = 0) -> torch.Tensor:
    """The mean of members' class probabilities as logits (their softmax gives the mean back),
    from `stacked` member outputs (members x B x C x ...): softmax over the channels but the last
    `sigmoid_channels`, which are independent probabilities averaged as such (returned as logits).
    """
    split = stacked.shape[2] - sigmoid_channels
    classes = stacked[:, :, :split].softmax(2).mean(0).clamp_min(1e-12).log()
    if not sigmoid_channels:
        return classes
    independent = torch.sigmoid(stacked[:, :, split:]).mean(0).clamp(1e-7, 1 - 1e-7)
    return torch.cat([classes, torch.logit(independent)], 1)


class ModelAverage(nn.Module):
    """The average of `members`, each fed its own view of the input.

    Args:
        members: networks of identical inputs and outputs (built from their configs).
        rule: `softmax` (class probabilities over dim 1, e.g. classes or per-pixel classes),
            `sigmoid` (independent probabilities) or `mean` (values).
        input_scale, input_shift: per member and image channel, `x * scale + shift` turns the
            ensemble's normalized image into the member's (members normalized with the statistics
            of their own training data); None: the same input for all.
        tabular_state, tabular_members: the ensemble's encoding of clinical columns and each
            member's own (`TabularEncoder.state`; members fitted on other rows, e.g. a CV's
            folds): each member reads its own encoding, a linear map of the ensemble's
            (`medtrain.data.tabular.member_map`). None: the tabular input as it is.
        output_scale, output_shift: per member and output, `out * scale + shift` turns a member's
            values into the ensemble's units before `mean` (members standardised with their own
            training targets); None: as they are.
        sigmoid_channels: with `softmax`, this many last output channels are independent
            probabilities (a segmentation's contact logit, `task.instances.method=contacts`),
            averaged as `sigmoid` does; the softmax covers the channels before them.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        rule: str = "softmax",
        input_scale: Sequence[Sequence[float]] | None = None,
        input_shift: Sequence[Sequence[float]] | None = None,
        output_scale: Sequence[Sequence[float]] | None = None,
        output_shift: Sequence[Sequence[float]] | None = None,
        sigmoid_channels: int = 0,
        tabular_state: Sequence[Any] | None = None,
        tabular_members: Sequence[Sequence[Any]] | None = None,
    ):
        super().__init__()
        if sigmoid_channels and rule != "softmax":
            raise ConfigError(
                f"model.sigmoid_channels={sigmoid_channels} splits a softmax average, not "
                f"rule={rule}"
            )
        self.sigmoid_channels = int(sigmoid_channels)
        if rule not in RULES:
            raise ConfigError(f"model.rule={rule!r}: choose one of {list(RULES)}")
        members = list(members)
        if len(members) < 2:
            raise ConfigError(
                f"model.members: an average needs 2 or more networks, not {len(members)}"
            )
        keys = {input_keys(m) for m in members}
        if len(keys) > 1:
            raise ConfigError(f"model.members read different inputs: {sorted(keys)}")
        self.members = nn.ModuleList(members)
        self.rule = rule
        self.input_keys = keys.pop()
        settings = {
            "input_scale": input_scale,
            "input_shift": input_shift,
            "output_scale": output_scale,
            "output_shift": output_shift,
        }
        for first, second in (("input_scale", "input_shift"), ("output_scale", "output_shift")):
            if (settings[first] is None) != (settings[second] is None):
                raise ConfigError(f"model.{first} and model.{second}: give both or neither")
        if input_scale is not None and "image" not in self.input_keys:
            raise ConfigError("model.input_scale rescales images; these members read no image")
        if output_scale is not None and rule != "mean":
            raise ConfigError(f"model.output_scale applies to values (rule=mean), not rule={rule}")
        self.image_index = self.input_keys.index("image") if "image" in self.input_keys else None
        for name, value in (
            ("input_scale", input_scale),
            ("input_shift", input_shift),
            ("output_scale", output_scale),
            ("output_shift", output_shift),
        ):
            if value is not None and len(value) != len(members):
                raise ConfigError(f"model.{name} has {len(value)} rows for {len(members)} members")
            tensor = None if value is None else torch.as_tensor(value, dtype=torch.float32)
            self.register_buffer(name, tensor)
        self.tabular_index = self._tabular_maps(tabular_state, tabular_members, len(members))

    def _tabular_maps(self, state: Any, members: Any, count: int) -> int | None:
        """Register each member's (weight, bias) from the ensemble's clinical encoding to its own
        (buffers `tabular_weight_<k>`, `tabular_bias_<k>`: their widths differ); the position of
        the tabular input, or None without maps."""
        if (state is None) != (members is None):
            raise ConfigError("model.tabular_state and model.tabular_members: give both or neither")
        if state is None:
            return None
        if "tabular" not in self.input_keys:
            raise ConfigError("model.tabular_state maps clinical columns; the members read none")
        if len(members) != count:
            raise ConfigError(f"model.tabular_members has {len(members)} rows for {count} members")
        for k, member in enumerate(members):
            try:
                weight, bias = member_map(state, member)
            except (KeyError, TypeError, ValueError) as err:
                raise ConfigError(f"model.tabular_members[{k}]: {err}") from err
            self.register_buffer(
                f"tabular_weight_{k}", torch.as_tensor(weight, dtype=torch.float32)
            )
            self.register_buffer(f"tabular_bias_{k}", torch.as_tensor(bias, dtype=torch.float32))
        return self.input_keys.index("tabular")

    def _member_tabular(self, k: int, tabular: torch.Tensor) -> torch.Tensor:
        """Member `k`'s encoding of the clinical columns, in float32 also under autocast: bf16
        would round the one-hot and indicator columns it moves (errors of 0.05 measured)."""
        weight, bias = getattr(self, f"tabular_weight_{k}"), getattr(self, f"tabular_bias_{k}")
        with torch.autocast(tabular.device.type, enabled=False):
            return tabular.float() @ weight.T + bias

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        outputs = []
        for k, member in enumerate(self.members):
            args = list(inputs)
            if self.input_scale is not None:
                image = args[self.image_index]
                shape = (1, -1) + (1,) * (image.ndim - 2)
                args[self.image_index] = image * self.input_scale[k].view(shape) + self.input_shift[
                    k
                ].view(shape)
            if self.tabular_index is not None:
                args[self.tabular_index] = self._member_tabular(k, args[self.tabular_index])
            out = member(*args).float()
            if self.output_scale is not None:
                shape = (1, -1) + (1,) * (out.ndim - 2)
                out = out * self.output_scale[k].view(shape) + self.output_shift[k].view(shape)
            outputs.append(out)
        stacked = torch.stack(outputs)
        if self.rule == "mean":
            return stacked.mean(0)
        if self.rule == "sigmoid":
            return torch.logit(torch.sigmoid(stacked).mean(0).clamp(1e-7, 1 - 1e-7))
        return mean_class_logits(stacked, self.sigmoid_channels)
