"""The latent store block meets Prefect's standards for integration blocks (the suite prefect-aws
runs over its blocks), and every block type the collection entry point registers is covered.

The suite's logo check downloads ``_logo_url``; tests here never reach the network, so that one
check reads the same file from this checkout (the URL names its path in the repository) and applies
the suite's rules to it."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
from prefect.blocks.core import Block
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect.utilities.dispatch import get_registry_for_type
from prefect.utilities.importtools import to_qualified_name

from prefect_acestep.tasks.blocks import RAW_URL

ROOT = Path(__file__).resolve().parents[1]


def _collection_blocks() -> list[type[Block]]:
    """The block classes defined by the modules our ``prefect.collections`` entry point loads."""
    (entry,) = [ep for ep in entry_points(group="prefect.collections") if ep.name == "prefect_acestep"]
    module = entry.load()
    registry = get_registry_for_type(Block) or {}
    return [cls for cls in registry.values() if to_qualified_name(cls).startswith(module.__name__ + ".")]


BLOCKS = _collection_blocks()


def test_the_collection_registers_the_latent_store_and_cache_storage_blocks() -> None:
    assert sorted(cls.get_block_type_slug() for cls in BLOCKS) == ["ace-cache-storage", "ace-latent-store"]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda cls: cls.__name__)
class TestAllBlocksAdhereToStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self, block: type[Block]) -> type[Block]:
        return block

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        from PIL import Image

        logo_url = str(block._logo_url)
        assert logo_url.startswith(RAW_URL + "/"), logo_url
        image = Image.open(ROOT / logo_url.removeprefix(RAW_URL + "/"))
        assert image.width == image.height, "Logo should be a square image"
        assert 1000 > image.width > 45, f"Logo should be between 45 and 1000 px wide, is {image.width} px"
