"""Audio feature provenance: a run records which extractor made its training features, and only a model
trained on the project's own extractor takes a recording as driver.

Three tiny runs on one AD-NeRF subject whose ``aud.npy`` is replaced by features the project did not make
(DeepSpeech logits or HuBERT features in real subjects): with the external file (a ``.wav`` driver is
refused, with the reason and the fix), with ``audio_features="wav"`` (recomputed from ``aud.wav``: a
``.wav`` drives it), and with ``[N, 2, 1024]`` HuBERT-shaped features (they train; a 29-wide driver is
refused by name).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from nerfstudio.scripts.train import train_loop

from sahs_nerfstudio.data import audio as audio_io
from sahs_nerfstudio.data import formats
from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig
from sahs_nerfstudio.presets import tiny_trainer_config
from sahs_nerfstudio.rendering.driven import render_driven_video
from sahs_nerfstudio.utils.run_loader import load_run


def _train(data: Path, out: Path, name: str, audio_features: str, steps: int = 3) -> Path:
    config = tiny_trainer_config(data, steps=steps, rays=64, output_dir=out)
    config.pipeline.datamanager.dataparser.audio_features = audio_features  # type: ignore[attr-defined]
    config.experiment_name = name
    config.set_timestamp()
    config.save_config()
    train_loop(local_rank=0, world_size=1, config=config)
    return config.get_base_dir() / "config.yml"


def _wav(path: Path, seconds: float = 0.24, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(
        path, (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), rate
    )
    return path


@pytest.fixture(scope="module")
def external_subject(subject_nonsquare, tmp_path_factory) -> Path:
    """The subject with an ``aud.npy`` the project's extractor does not produce from its ``aud.wav``."""
    root = tmp_path_factory.mktemp("external") / "adnerf"
    shutil.copytree(subject_nonsquare / "adnerf", root)
    own = formats.read_audio_features(root / "aud.npy")
    rng = np.random.default_rng(7)
    formats.write_audio_features(root / "aud.npy", np.tanh(own * 0.7 + rng.normal(0, 0.3, own.shape)))
    n = own.shape[0]
    np.save(root / "aud_hu.npy", rng.normal(size=(n, 2, 1024)).astype(np.float32))
    return root


def test_provenance_names_the_extractor(subject_nonsquare, external_subject):
    own = SAHSDataParserConfig(data=subject_nonsquare / "adnerf").setup().get_dataparser_outputs("train")
    assert own.metadata["audio_provenance"] == audio_io.project_extractor_description(25.0)
    assert "29 mel bands" in own.metadata["audio_provenance"] and "16-frame windows" in own.metadata["audio_provenance"]
    ext = SAHSDataParserConfig(data=external_subject).setup().get_dataparser_outputs("train")
    n = formats.read_audio_features(external_subject / "aud.npy").shape[0]
    assert ext.metadata["audio_provenance"] == f"external: aud.npy [{n}, 16, 29]"
    hubert = SAHSDataParserConfig(data=external_subject, audio_features="aud_hu.npy").setup()
    assert hubert.get_dataparser_outputs("train").metadata["audio_provenance"] == f"external: aud_hu.npy [{n}, 2, 1024]"
    wav = SAHSDataParserConfig(data=external_subject, audio_features="wav").setup().get_dataparser_outputs("train")
    assert audio_io.is_project_extractor(wav.metadata["audio_provenance"])


def test_external_features_refuse_a_wav_driver_and_wav_features_take_one(external_subject, subject_nonsquare, tmp_path):
    speech = _wav(tmp_path / "speech.wav")
    config = _train(external_subject, tmp_path / "runs", "external", "aud.npy")
    # The record travels in the checkpoint: put the project's features back and the run still says external.
    external = external_subject / "aud.npy"
    kept = tmp_path / "external_aud.npy"
    shutil.copy(external, kept)
    shutil.copy(subject_nonsquare / "adnerf" / "aud.npy", external)
    _, pipeline, _, _ = load_run(config, test_mode="test")
    shutil.copy(kept, external)
    model: Any = pipeline.model
    assert model.audio_provenance().startswith("external: aud.npy")
    with pytest.raises(formats.FormatError) as err:
        render_driven_video(config, None, driver=speech, cameras="frame", loaded=(None, pipeline))  # type: ignore[arg-type]
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{speech}: field '<samples>'")
    assert "external: aud.npy" in message and "--pipeline.datamanager.dataparser.audio-features wav" in message

    # The same subject with --audio-features wav: features recomputed from its aud.wav, and a recording drives it.
    config = _train(external_subject, tmp_path / "runs", "from-wav", "wav")
    result = render_driven_video(config, None, driver=speech, cameras="frame", max_frames=3)
    assert result.num_frames == 3


def test_hubert_shaped_features_train_and_refuse_a_29_wide_driver(external_subject, subject_nonsquare, tmp_path):
    config = _train(external_subject, tmp_path / "runs", "hubert", "aud_hu.npy")
    _, pipeline, _, _ = load_run(config, test_mode="test")
    model: Any = pipeline.model
    assert tuple(model.audio_window) == (2, 1024)
    deepspeech = subject_nonsquare / "adnerf" / "aud.npy"
    with pytest.raises(formats.FormatError, match=r"expected audio windows of shape \[2, 1024\].*found \[16, 29\]"):
        render_driven_video(config, None, driver=deepspeech, cameras="frame", loaded=(None, pipeline))  # type: ignore[arg-type]
