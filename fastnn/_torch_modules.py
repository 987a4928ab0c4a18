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


class Recurrent(nn.Module):
    """A torch nn.RNN / nn.GRU / nn.LSTM (batch_first) as a fastnn recurrent
    layer: (N, L, C) in, the whole output sequence (N, L, H) out when
    `return_sequences`, else its last step (N, H) (the state tuple dropped,
    so that it composes in an nn.Sequential)."""

    def __init__(self, rnn, return_sequences=False):
        super().__init__()
        self.rnn, self.return_sequences = rnn, bool(return_sequences)

    def forward(self, x):
        y = self.rnn(x)[0]
        return y if self.return_sequences else y[:, -1]

    def extra_repr(self):
        return f"return_sequences={self.return_sequences}"
