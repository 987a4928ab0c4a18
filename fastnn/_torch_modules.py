"""The torch modules fastnn.export.to_torch builds besides torch's own
(imported only by it: this module imports torch).  Module-level classes,
so that a converted model pickles (torch.save) and loads again."""

from torch import nn


class Permute(nn.Module):
    """Between fastnn's channels-last layout and torch's channels-first."""

    def __init__(self, *perm):
        super().__init__()
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x):
        return x.permute(*self.perm)

    def extra_repr(self):
        return f"{self.perm}"


class ResidualBlock(nn.Module):
    """y = body(x) + projection(x) (fastnn.Residual; an empty projection is
    the identity)."""

    def __init__(self, body, projection):
        super().__init__()
        self.body, self.projection = body, projection

    def forward(self, x):
        return self.body(x) + self.projection(x)


class Step(nn.Module):
    """Heaviside step: 1 where x > 0, else 0 (fastnn's "step")."""

    def forward(self, x):
        return (x > 0).to(x.dtype)


class Sign(nn.Module):
    """sign(x) (fastnn's "sign")."""

    def forward(self, x):
        return x.sign()
