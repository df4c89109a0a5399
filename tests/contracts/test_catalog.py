"""The catalog the eval stage reads from a gateway.toml: providers, prices, in-house flags; bad files name the field."""

from __future__ import annotations

import pytest

from autarky.contracts.catalog import CatalogDeployment, CatalogEntry, read_catalog
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


def test_every_deployment_is_seen_and_the_model_is_summarised_as_the_gateway_serves_it(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[providers.local]\nbase_url = "http://x"\nin_house = true\n[providers.local2]\nbase_url = "z"\n'
                    'in_house = true\n[providers.partner]\nbase_url = "y"\n'
                    '[models.mixed]\nprovider = "local"\n'
                    'deployments = [{provider = "partner", usd_per_1m_input = 0.2, usd_per_1m_output = 0.8}]\n'
                    '[models.ours]\nprovider = "local"\nusd_per_1m_input = 0.1\n'
                    'deployments = [{provider = "local2", upstream_id = "o2"}]\n')
    catalog = read_catalog(path)
    mixed = catalog["mixed"]
    assert mixed.deployments == (CatalogDeployment("local", 0.0, 0.0, True),
                                 CatalogDeployment("partner", 0.2, 0.8, False))
    # The mean price (requests take turns), not in house (part of its traffic leaves), no pinned provider.
    assert (mixed.usd_per_1m_input, mixed.usd_per_1m_output) == pytest.approx((0.1, 0.4))
    assert mixed.in_house is False and mixed.provider == ""
    ours = catalog["ours"]  # a deployment without prices has the model's
    assert [d.usd_per_1m_input for d in ours.deployments] == [0.1, 0.1]
    assert ours.in_house is True and ours.provider == "" and ours.usd_per_1m_input == pytest.approx(0.1)


@pytest.mark.parametrize("deployment,message", [
    ('{provider = "nope"}', "field models.m.deployments.0.provider: unknown provider 'nope'"),
    ('{provider = "p", usd_per_1m_output = "x"}', "field models.m.deployments.0: prices must be numbers"),
    ('{provider = "p", usd_per_1m_input = nan}', "models.m.deployments.0: prices must be finite and not negative"),
    ('"p"', "field models.m.deployments: must be a list of tables"),
])
def test_bad_deployments_name_the_field(tmp_path, deployment, message):
    path = tmp_path / "gateway.toml"
    path.write_text(f'[providers.p]\nbase_url = "x"\n[models.m]\nprovider = "p"\ndeployments = [{deployment}]\n')
    with pytest.raises(UserError, match=message):
        read_catalog(path)
