"""What every renderer of a loaded run needs: the split's dataset, the SAHS model, a progress bar."""

from __future__ import annotations

from typing import Any, Literal

from nerfstudio.pipelines.base_pipeline import Pipeline
from nerfstudio.utils.rich_utils import CONSOLE
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from sahs_nerfstudio.models.sahs_model import SAHSModel

Split = Literal["train", "val", "test"]


def split_dataset(pipeline: Pipeline, split: str) -> Any:
    """The loaded split's ``InputDataset``: the train split, or the evaluation split the run was loaded with."""
    datamanager: Any = pipeline.datamanager
    return datamanager.train_dataset if split == "train" else datamanager.eval_dataset


def sahs_model(pipeline: Pipeline) -> SAHSModel:
    """The pipeline's model, which the run loader has checked is a SAHS model."""
    model = pipeline.model
    assert isinstance(model, SAHSModel), type(model).__name__
    return model


def render_progress() -> Progress:
    """A progress bar with a live frames-per-second column (the task's ``fps`` field)."""
    return Progress(
        TextColumn("[bold]rendering {task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}  {task.fields[fps]:.2f} frames/s"),
        TimeRemainingColumn(),
        console=CONSOLE,
    )
