"""Entry point for ``sahs-data``; kept light so nerfstudio can import it without circular imports."""

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from sahs_nerfstudio.data.sahs_dataparser import SAHSDataParserConfig

sahs_dataparser = DataParserSpecification(
    config=SAHSDataParserConfig(),
    description="NeRFace (expression) or AD-NeRF (audio) talking-head data with 12-class semantic masks",
)
