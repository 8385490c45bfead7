"""The vision encoder's geometry: how big an image the model sees and how many tokens it costs.

Mirrors ``mistral_common``'s ``ImageEncoder`` (``_image_to_num_tokens`` and the resize that follows) so that an
image we hand over already at its final size is not resized again and costs exactly the same tokens (one
deliberate exception, for one-cell images: ``VisionGrid.target_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Fewest cells per side for an image that would otherwise be a single cell (see ``VisionGrid.target_size``).
MIN_CELLS_PER_SIDE = 2
MIN_CELLS = 2


@dataclass(frozen=True)
class VisionGrid:
    """Patch geometry; the defaults are Mistral Small 3.1's (tekken.json ``image`` block)."""

    patch_size: int = 14
    spatial_merge_size: int = 2
    max_image_size: int = 1540

    @classmethod
    def from_tekken(cls, image_config: dict[str, Any]) -> VisionGrid:
        return cls(
            patch_size=int(image_config["image_patch_size"]),
            spatial_merge_size=int(image_config.get("spatial_merge_size", 1)),
            max_image_size=int(image_config["max_image_size"]),
        )

    @property
    def cell(self) -> int:
        """Pixels per image token along one side (28 for Small 3.1)."""
        return self.patch_size * self.spatial_merge_size

    def token_grid(self, width: int, height: int) -> tuple[int, int]:
        """(columns, rows) of image tokens; same arithmetic, same float order as mistral_common."""
        w: int | float = width
        h: int | float = height
        ratio = max(h / self.max_image_size, w / self.max_image_size)
        if ratio > 1:
            w = max(round(w / ratio), 1)
            h = max(round(h / ratio), 1)
        return (int(w) - 1) // self.cell + 1, (int(h) - 1) // self.cell + 1

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The pixel size the model sees: whole cells, long side <= max_image_size (rounded up to a cell).

        One deliberate departure from mistral_common: an image that would fill a single cell (up to 28 x 28
        px: icons, emoji, thumbnails) is upscaled to 2 x 2 cells, square as before. With one image token in
        the whole batch, transformers' Mistral3 projector squeezes the feature matrix to 1-D and fails in
        ``split_with_sizes``; two or more tokens never hit that path, and the model is still told the truth
        (our token count is computed from the image we hand over, so prompt and pixels agree).
        """
        columns, rows = self.token_grid(width, height)
        if columns * rows < MIN_CELLS:
            columns = rows = MIN_CELLS_PER_SIDE
        return columns * self.cell, rows * self.cell

    def token_count(self, width: int, height: int) -> int:
        """Image tokens in the prompt: one per cell plus one break (or end) token per row."""
        columns, rows = self.token_grid(width, height)
        return (columns + 1) * rows


MISTRAL_SMALL_3_1 = VisionGrid()
