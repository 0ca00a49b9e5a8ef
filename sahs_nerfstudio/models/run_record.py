"""Facts about a run's training data that its checkpoints must carry (strings, not tensors).

Saved through torch's module *extra state* (``<prefix>._extra_state`` in the state dict), so they travel
with every checkpoint and a loaded model reports what it was trained on, not what the dataset folder
holds today. Checkpoints written before a fact existed load with the value the data gives now.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import nn

AUDIO_PROVENANCE = "audio_provenance"
"""Which extractor made the training audio features (see ``sahs_nerfstudio/data/audio.py``)."""


class RunRecord(nn.Module):
    """A small key -> string record persisted in the state dict."""

    def __init__(self, **values: Optional[str]) -> None:
        super().__init__()
        self.values: Dict[str, Optional[str]] = dict(values)

    def get(self, key: str) -> Optional[str]:
        return self.values.get(key)

    def get_extra_state(self) -> Dict[str, Optional[str]]:
        return dict(self.values)

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict):
            self.values.update({str(k): (None if v is None else str(v)) for k, v in state.items()})
