"""The catalog the eval stage reads from a gateway.toml: providers, prices, in-house flags; bad files name the field."""

from __future__ import annotations

import pytest

from autarky.contracts.catalog import CatalogEntry, read_catalog
from autarky.errors import UserError


def test_models_with_their_provider_prices_and_in_house_flag(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[providers.local]\nbase_url = "http://x"\nin_house = true\n[providers.partner]\nbase_url = "y"\n'
                    '[models.ours]\nprovider = "local"\n'
                    '[models.theirs]\nprovider = "partner"\nusd_per_1m_input = 0.15\nusd_per_1m_output = 0.6\n')
    assert read_catalog(path) == {"ours": CatalogEntry("local", 0.0, 0.0, True),
                                  "theirs": CatalogEntry("partner", 0.15, 0.6, False)}


@pytest.mark.parametrize("text,message", [
    ('[models.m]\nprovider = "nope"\n', "field models.m.provider: unknown provider 'nope'"),
    ('[providers.p]\n[models.m]\nprovider = "p"\nusd_per_1m_input = "cheap"\n', "models.m: prices must be numbers"),
    ("[models\n", "is not valid TOML"),
])
def test_bad_files_are_one_line_naming_the_field(tmp_path, text, message):
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        read_catalog(path)
    with pytest.raises(UserError, match="not found"):
        read_catalog(tmp_path / "missing.toml")
