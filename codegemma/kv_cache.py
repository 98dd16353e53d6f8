"""A preallocated key/value cache, passed into `Gemma.forward` from outside.

Slots are columns shared by the whole batch (column c holds the c-th token fed to the cache);
each row stores its own absolute positions, so left-padded prompts of different lengths run in
one batch: padding gets position -1 and is never attended to by real tokens.

Global layers keep every column. Sliding-window layers keep a ring of `window + slack` columns:
the window is all attention needs, and the slack lets the cache roll back up to `slack` tokens
(an editor's next request usually shares all but the last few tokens of the previous one).
"""

from __future__ import annotations

import torch

from codegemma.config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype=torch.float32, device="cpu",
                 slack: int | None = None):
        self.config = config
        self.batch_size = batch_size
        self.max_len = max_len
        window = config.sliding_window or max_len
        self.slack = window if slack is None else slack
        self.ring = min(max_len, window + self.slack)
        shape = lambda n: (batch_size, config.n_kv_heads, n, config.head_dim)  # noqa: E731
        self.k, self.v, self.sizes = [], [], []
        for layer_type in config.layer_types:
            n = self.ring if layer_type == "local" else max_len
            self.k.append(torch.zeros(shape(n), dtype=dtype, device=device))
            self.v.append(torch.zeros(shape(n), dtype=dtype, device=device))
            self.sizes.append(n)
        # positions per column, one table per buffer size (all layers of a size share columns)
        self.pos = {n: torch.full((batch_size, n), -1, dtype=torch.long, device=device) for n in set(self.sizes)}
        self.length = 0  # columns written so far
        self.next_position = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._pending: dict[int, torch.Tensor] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Store this step's keys/values; return (keys, values, key positions) to attend over."""
        T = k.shape[2]
        n = self.sizes[layer]
        start = self.length
        if start + T > self.max_len:
            raise ValueError(f"KV cache full: {start + T} tokens > max_len {self.max_len}")
        old_pos = self.pos[n]
        pos_table = self._stage_positions(n, positions, start, T)
        kb, vb = self.k[layer], self.v[layer]
        if n == self.max_len:  # linear buffer: write, then attend over everything written
            kb[:, :, start:start + T] = k
            vb[:, :, start:start + T] = v
            end = start + T
            return kb[:, :, :end], vb[:, :, :end], pos_table[:, :end]
        if T == 1:  # ring, one token: the slot it overwrites has already left the window
            slot = start % n
            kb[:, :, slot] = k[:, :, 0]
            vb[:, :, slot] = v[:, :, 0]
            used = min(start + 1, n)  # before the ring wraps, only its first columns hold keys
            return kb[:, :, :used], vb[:, :, :used], pos_table[:, :used]
        # ring, several tokens: attend over the ring's written columns + new tokens, then keep the
        # newest `n` (a first prompt skips the empty ring: a third of the attention work at 512 tokens)
        used = min(start, n)
        keys = torch.cat((kb[:, :, :used], k), dim=2)
        values = torch.cat((vb[:, :, :used], v), dim=2)
        key_pos = torch.cat((old_pos[:, :used], positions), dim=1)
        keep = min(T, n)
        slots = torch.arange(start + T - keep, start + T, device=k.device) % n
        kb[:, :, slots] = k[:, :, T - keep:]
        vb[:, :, slots] = v[:, :, T - keep:]
        return keys, values, key_pos

    def decode_slot(self, layer: int, positions: torch.Tensor) -> tuple[int, int, torch.Tensor]:
        """For one new token per row: (column the keys and values go to, number of columns to
        attend over, their position table [B, columns]). `update`'s bookkeeping for callers that
        write the buffers themselves (codegemma.decode_step); `advance` follows as usual."""
        n = self.sizes[layer]
        start = self.length
        if start + 1 > self.max_len:
            raise ValueError(f"KV cache full: {start + 1} tokens > max_len {self.max_len}")
        table = self._stage_positions(n, positions, start, 1)
        if n == self.max_len:
            return start, start + 1, table
        return start % n, min(start + 1, n), table

    def _stage_positions(self, n: int, positions: torch.Tensor, start: int, T: int) -> torch.Tensor:
        """The position table of buffer size n once this step is written; staged until `advance`.

        Computed once per step and shared by every layer with that buffer size.
        """
        if n not in self._pending:
            table = self.pos[n]
            if n == self.max_len:
                table[:, start:start + T] = positions
            elif T == 1:
                table[:, start % n] = positions[:, 0]
            else:
                table = table.clone()  # this step still attends over the old ring's positions
                keep = min(T, n)
                slots = torch.arange(start + T - keep, start + T, device=positions.device) % n
                table[:, slots] = positions[:, T - keep:]
            self._pending[n] = table
        return self._pending[n]

    def advance(self, positions: torch.Tensor):
        """Called by the model after all layers ran on this step."""
        T = positions.shape[1]
        for n, table in self._pending.items():
            self.pos[n] = table
        self._pending.clear()
        self.length += T
        self.next_position = positions[:, -1] + 1

    def keep_rows(self, rows: torch.Tensor):
        """Drop every batch row not in `rows` (indices, in the order to keep), between steps: a
        batch whose rows finished at different times goes on computing only the live ones."""
        if self._pending:
            raise RuntimeError("keep_rows between steps only")
        self.k = [k.index_select(0, rows) for k in self.k]
        self.v = [v.index_select(0, rows) for v in self.v]
        self.pos = {n: table.index_select(0, rows) for n, table in self.pos.items()}
        self.next_position = self.next_position.index_select(0, rows)
        self.batch_size = len(rows)

    def can_truncate(self, length: int) -> bool:
        """Whether rolling back to `length` columns keeps every key a future token could need."""
        if length > self.length:
            return False
        if self.ring == self.max_len:
            return True
        window = self.config.sliding_window
        # columns [length - window + 1, length) must not have been overwritten by later ones
        return self.length - length <= self.ring - window + 1

    def truncate(self, length: int):
        if not self.can_truncate(length):
            raise ValueError(f"cannot roll the cache back from {self.length} to {length} tokens")
        for n, table in self.pos.items():
            if n == self.max_len:
                table[:, length:] = -1
            else:
                cols = torch.arange(length, self.length, device=table.device) % n
                table[:, cols] = -1
        self.length = length
        self.next_position = torch.full_like(self.next_position, length)
