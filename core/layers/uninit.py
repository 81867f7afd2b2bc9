"""Linear, Embedding and LayerNorm that skip random initialisation.

Every parameter is overwritten from the checkpoint (and loading checks that none is left
unfilled), so initialising them is wasted work: for MiniLM it costs more than the load itself,
and on the meta device it drags in torch._dynamo (about 2 s of imports).
"""

from __future__ import annotations

from torch import nn


class Linear(nn.Linear):
    def reset_parameters(self) -> None:
        pass


class Embedding(nn.Embedding):
    def reset_parameters(self) -> None:
        pass


class LayerNorm(nn.LayerNorm):
    def reset_parameters(self) -> None:
        pass
