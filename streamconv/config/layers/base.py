"""What every layer type's spec shares: strict keys, a name, `publish`, and `build`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from streamconv.layers import Layer

# Layer names become torch module names too, which cannot contain a dot.
LAYER_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
LayerName = Annotated[str, Field(pattern=LAYER_NAME_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerConfig(Strict):
    """One [[layers]] entry. A layer type subclasses it in a file of its own, narrows `type`
    to its Literal (the value a config writes), and registers in LAYER_TYPES.

    `build` runs only in model.py: a subclass imports torch and streamconv.layers inside it,
    so that loading settings (capture, view) never pulls torch in.
    """

    type: str
    name: LayerName
    publish: bool = True

    def build(self, channels: int) -> tuple[Layer, int]:
        """The streaming layer, on the CPU in float64, and the channel count it outputs."""
        raise NotImplementedError(type(self).__name__)
