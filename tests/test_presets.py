"""The CPU presets: typed config objects, and the command line that rebuilds them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sahs_nerfstudio.fields.fast_field import SAHSFastFieldConfig
from sahs_nerfstudio.fields.sahs_field import SAHSFieldConfig
from sahs_nerfstudio.models.sahs_fast_model import SAHSFastModelConfig
from sahs_nerfstudio.models.sahs_model import SAHSModelConfig
from sahs_nerfstudio.presets import (
    DEMO_CLASS_AREA_EXPONENT,
    DEMO_FAST_S_PER_STEP,
    DEMO_FIT_AFTER,
    DEMO_SAHS_S_PER_STEP,
    DEMO_STEP_CAP,
    cpu_field,
    cpu_model_config,
    demo_trainer_config,
    fast_cpu_model_config,
    fast_cpu_trainer_config,
    fast_demo_model_config,
    model_flags,
    tiny_field,
    tiny_model_config,
    tiny_trainer_config,
)


def _cli(method: str, flags: list[str]):
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    return tyro.cli(AnnotatedBaseConfigUnion, args=[method, *flags])


def test_presets_are_resolved_configs_of_the_method():
    for driver in ("audio", "expression"):
        cpu, tiny = cpu_field(driver), tiny_field(driver)
        assert isinstance(tiny, SAHSFieldConfig) and tiny == tiny.resolved() and cpu == cpu.resolved()
        # tiny shrinks the CPU sizes and keeps the driver's published conditioning
        assert (tiny.canonical_width, tiny.position_frequencies, tiny.warp_depth) == (64, 6, cpu.warp_depth)
        assert tiny.use_pose == SAHSFieldConfig.for_driver(driver).use_pose
    # the switches reach both drivers' fields before resolution (no warp, no hyper: the code enters the NeRF)
    nerface = cpu_model_config(use_warp=False, use_hyper=False)
    assert nerface.audio_field.canonical_code is True and nerface.expression_field.use_hyper is False
    fast = fast_cpu_model_config()
    assert isinstance(fast, SAHSFastModelConfig) and isinstance(fast.audio_field, SAHSFastFieldConfig)
    assert fast.audio_field.implementation == "torch" and fast.num_proposal_samples_per_ray == (48,)


def test_trainer_presets_set_the_schedule_on_the_given_model(tmp_path: Path):
    config = tiny_trainer_config(tmp_path / "data", steps=40, rays=64, output_dir=tmp_path)
    model = config.pipeline.model
    assert isinstance(model, SAHSModelConfig) and model.expression_field == tiny_field("expression")
    assert model.audio_attention_start_step == 20 and model.num_coarse_samples == 16
    assert config.max_num_iterations == 40 and config.machine.device_type == "cpu"
    fast = fast_cpu_trainer_config(tmp_path / "data", steps=10, rays=64, output_dir=tmp_path)
    assert isinstance(fast.pipeline.model, SAHSFastModelConfig) and fast.pipeline.model.audio_attention_start_step == 5


def test_model_flags_rebuild_the_preset_on_the_command_line():
    preset = tiny_model_config()
    flags = model_flags(preset)
    assert "--pipeline.model.expression-field.canonical-depth" in flags
    model = _cli("sahs", flags).pipeline.model
    assert isinstance(model, SAHSModelConfig)
    assert model.audio_field == preset.audio_field and model.expression_field == preset.expression_field
    assert (model.num_coarse_samples, model.num_importance_samples) == (16, 16)
    # only the named fields are rendered: the other one keeps the published sizes
    only_expression = _cli("sahs", model_flags(preset, fields=("expression-field",))).pipeline.model
    assert only_expression.expression_field == preset.expression_field
    assert only_expression.audio_field == SAHSFieldConfig.for_driver("audio")


def test_model_flags_refuse_values_without_a_command_line_form():
    # the proposal networks' arguments are a list of dicts: no flag renders them, so say so
    with pytest.raises(ValueError, match="proposal-net-args-list"):
        model_flags(fast_cpu_model_config())


def test_demo_preset_turns_the_time_budget_into_steps_and_a_stop(tmp_path: Path):
    fast = demo_trainer_config(tmp_path / "data", train_seconds=60.0, output_dir=tmp_path)
    assert fast.method_name == "sahs-fast" and fast.max_train_seconds == 60.0  # type: ignore[attr-defined]
    # The schedules start at the estimate and are fitted to the measured rate; the budget, not a step count, stops.
    estimate = int(60.0 / DEMO_FAST_S_PER_STEP)
    assert fast.fit_schedule_after == DEMO_FIT_AFTER  # type: ignore[attr-defined]
    assert fast.max_num_iterations == estimate * DEMO_STEP_CAP
    assert fast.optimizers["fields"]["scheduler"].max_steps == estimate
    assert fast.pipeline.model == replace(
        fast_demo_model_config(), audio_attention_start_step=estimate // 2, eval_num_rays_per_chunk=1024
    )
    sampler = fast.pipeline.datamanager.pixel_sampler  # type: ignore[attr-defined]
    assert sampler.class_area_exponent == DEMO_CLASS_AREA_EXPONENT
    # an explicit step count wins over the budget's; the budget still stops it
    explicit = demo_trainer_config(tmp_path, steps=7, train_seconds=60.0)
    assert explicit.max_num_iterations == 7 and explicit.fit_schedule_after is None  # type: ignore[attr-defined]
    faithful = demo_trainer_config(tmp_path / "data", method="sahs", train_seconds=60.0, rays=256)
    assert faithful.method_name == "sahs" and faithful.max_num_iterations == int(60.0 / DEMO_SAHS_S_PER_STEP) * 10
    assert faithful.pipeline.model.expression_field == tiny_field("expression")  # type: ignore[attr-defined]
    assert faithful.pipeline.datamanager.train_num_rays_per_batch == 256  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="nerfacto"):
        demo_trainer_config(tmp_path, method="nerfacto")
