"""The context module: learned context queries and the connector to SAM 2's prompt space.

Layout (matches the authors' released checkpoints, names aside):
``context_queries`` [1, M, C] -> reasoner last-layer states -> ``connector`` (learned position
embedding, then ``depth`` pre-LN transformer blocks, bidirectional, no final norm) ->
optional ``query_collapse`` (Conv1d with kernel M: M tokens -> 1, computed as one matrix product) -> ``proj_to_sam``
(Linear C->C, exact GELU, Linear C->256).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lens_model.config import ConnectorConfig

SAM_PROMPT_DIM = 256


class ConnectorAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"connector width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ConnectorMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu, as in the Qwen2-VL vision blocks


class ConnectorBlock(nn.Module):
    def __init__(self, dim: int, cfg: ConnectorConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = ConnectorAttention(dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = ConnectorMLP(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Connector(nn.Module):
    def __init__(self, dim: int, num_queries: int, cfg: ConnectorConfig) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.blocks = nn.ModuleList(ConnectorBlock(dim, cfg) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


class SequenceCollapse(nn.Conv1d):
    """The authors' ``conv_1d``: a Conv1d with kernel M over the M query tokens, i.e. one output position.

    That is one matrix product of the flattened tokens with the (C, C*M) weight, computed here as a
    single ``linear`` (the convolution kernel is an order of magnitude slower on CPU:
    ``benchmarks/model_latency.py --collapse``); same result up to summation order. It stays a Conv1d
    module, so the weight layout (C, C, M), the state-dict keys and ZeRO-3's gathering are unchanged.
    """

    def __init__(self, dim: int, num_queries: int) -> None:
        super().__init__(dim, dim, kernel_size=num_queries)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, M, C) -> (B, 1, C)."""
        if x.shape[1] != self.kernel_size[0]:
            raise ValueError(f"the collapse takes {self.kernel_size[0]} tokens, got {x.shape[1]}")
        flat = x.transpose(1, 2).reshape(x.shape[0], -1)  # (B, C*M) in the weight's (channel, position) order
        return F.linear(flat, self.weight.view(self.out_channels, -1), self.bias).unsqueeze(1)


class ContextModule(nn.Module):
    """Turns the reasoner's hidden states at the M query positions into SAM 2 sparse prompts."""

    def __init__(self, dim: int, num_queries: int, cfg: ConnectorConfig, collapse: bool) -> None:
        super().__init__()
        self.context_queries = nn.Parameter(torch.empty(1, num_queries, dim))
        self.connector = Connector(dim, num_queries, cfg)
        self.query_collapse = SequenceCollapse(dim, num_queries) if collapse else None
        self.proj_to_sam = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, SAM_PROMPT_DIM))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' declared init (which HF's no_init_weights silently skipped in their runs)."""
        nn.init.normal_(self.context_queries, std=0.02)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.connector.pos_embed)

    @property
    def num_queries(self) -> int:
        return self.context_queries.shape[1]

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        """(B, M, C) last-layer query states -> (B, K, 256) prompts; K = 1 with the collapse, else M."""
        x = self.connector(query_states)
        if self.query_collapse is not None:
            x = self.query_collapse(x)
        return self.proj_to_sam(x)
