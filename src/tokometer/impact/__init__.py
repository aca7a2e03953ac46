"""Energy and CO2e per request: what a request ran on (the model's size, the data centre's
PUE, the grid's carbon intensity), from the config or else EcoLogits' data, then its method
(method.py).

A model neither knows gets no figures (null, never zero) and a warning, once.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pycountry
from ecologits.electricity_mix_repository import electricity_mixes
from ecologits.model_repository import ParametersMoE, models
from ecologits.tracers.utils import PROVIDER_CONFIG_MAP
from ecologits.utils.range_value import RangeValue

from ..catalog import vendor_of
from ..config import LOOPBACK, Model, Provider, Route, Settings
from ..events import Usage
from .measured import DEFAULT_WATTS_PER_CORE
from .method import ESTIMATED, MEASURED, REF, Impact, Prepared, Serving, Span

__all__ = ["ESTIMATED", "MEASURED", "REF", "Impact", "Impacts", "Span", "watts_per_core"]
log = logging.getLogger("tokometer.impact")

# Vendors (catalog.vendors) whose models EcoLogits lists, under its provider names; and
# OpenTelemetry's names for Google's services (gen_ai.provider.name), which EcoLogits
# describes as one (its google_genai tracer serves the Gemini API and Vertex AI alike).
_ECOLOGITS_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "mistral": "mistralai",
                       "google": "google_genai", "cohere": "cohere",
                       "gcp.gemini": "google_genai", "gcp.vertex_ai": "google_genai",
                       "gcp.gen_ai": "google_genai"}
# A provider EcoLogits does not describe: from a hyperscale data centre (about 1.1) to the
# industry's average (about 1.56, Uptime Institute's 2024 survey).
_ANY_PUE = Span(1.1, 1.56)
_MAX_NAMES = 1024  # servings and warnings remembered


class Impacts:
    """Resolves what each route runs on, once, and works out each request's figures."""

    def __init__(self) -> None:
        self._grids: dict[str, tuple[Span, float, str] | None] = {}
        self._prepared: dict[tuple[str, str, str, str | None], Prepared | None] = {}
        self._warned: set[str] = set()

    def of(self, model: Model, route: Route, served: str | None, usage: Usage,
           latency_s: float) -> Impact | None:
        """The request's figures, or None when the model or the grid is unknown."""
        key = (model.name, route.provider.name, route.model, served)
        if key in self._prepared:
            prepared = self._prepared[key]
        else:
            if len(self._prepared) >= _MAX_NAMES:  # served names come from providers
                self._prepared.clear()
            prepared = self._prepared[key] = self._prepare(model, route, served)
        if prepared is None:
            return None
        return prepared.impact(usage.output_tokens, usage.input_tokens, latency_s)

    def corrected(self, settings: Settings, original: dict[str, Any], input_delta: int,
                  output_delta: int) -> tuple[Impact, Impact] | None:
        """A modelled event's figures before and after a correction of its tokens (a
        correction carries the difference); None when they cannot be worked out again: no
        figures, measured ones, or a provider or model no longer configured."""
        provider = settings.providers.get(original.get("provider") or "")
        model = settings.models.get(original.get("model_requested") or "")
        if original.get("energy_source") != ESTIMATED or provider is None or model is None:
            return None
        route = next((r for r in model.routes if r.provider is provider),
                     Route(provider, original.get("model") or ""))
        seconds = (original.get("duration_ms") or 0) / 1000
        before = Usage(input_tokens=original["input_tokens"],
                       output_tokens=original["output_tokens"])
        after = Usage(input_tokens=max(before.input_tokens + input_delta, 0),
                      output_tokens=max(before.output_tokens + output_delta, 0))
        was, now = (self.of(model, route, original.get("model"), u, seconds)
                    for u in (before, after))
        return (was, now) if was is not None and now is not None else None

    def measured(self, provider: Provider, cpu_seconds: float) -> Impact | None:
        """A local server's figures from its measured CPU time: at its power per core, times
        the PUE if one is set (none: the machine's own draw), at its grid's intensity."""
        grid = self._grid(provider)
        watts = watts_per_core(provider)
        if grid is None or watts is None:
            return None
        gwp = grid[1]
        pue = provider.impact.pue if provider.impact and provider.impact.pue else (1.0, 1.0)
        wh = cpu_seconds * watts / 3600
        return Impact(energy_wh=Span(wh * pue[0], wh * pue[1]),
                      co2e_g=Span(wh * pue[0] * gwp, wh * pue[1] * gwp),
                      ref=f"measured: CPU time x {watts:g} W per core", source=MEASURED)

    def _prepare(self, model: Model, route: Route, served: str | None) -> Prepared | None:
        grid = self._grid(route.provider)
        size = self._size(model, route, served)
        if grid is None or size is None:
            return None
        pue, gwp, zone = grid
        active, total, tps, ttft = size
        return Prepared(Serving(active, total, tps, ttft, pue, gwp, zone))

    def _grid(self, provider: Provider) -> tuple[Span, float, str] | None:
        if provider.name not in self._grids:
            if len(self._grids) >= _MAX_NAMES:  # ingested readings name providers of their own
                self._grids.clear()
            self._grids[provider.name] = self._find_grid(provider)
        return self._grids[provider.name]

    def _find_grid(self, provider: Provider) -> tuple[Span, float, str] | None:
        """The PUE, and the grid's kgCO2e per kWh: the config's, else the region's, else
        EcoLogits' data centre for the provider's vendor, else the world's."""
        known = PROVIDER_CONFIG_MAP.get(_ecologits_provider(provider.name) or "")
        datacentre = provider.impact
        region = _alpha3(provider.region)
        if provider.region and region is None:  # "UK", "EL": no country, so no grid
            self._warn(f"region {provider.region}", f"region {provider.region!r} of provider "
                       f"{provider.name} is no ISO 3166 country: its requests get no energy "
                       "or CO2e figures (set [providers.impact] zone)")
            if not (datacentre and datacentre.zone):
                return None
        zone = (datacentre.zone if datacentre and datacentre.zone else None) \
            or region or (known.datacenter_location if known else None) or "WOR"
        mix = electricity_mixes.find_electricity_mix(zone=zone)
        if mix is None:
            self._warn(f"zone {zone}", f"EcoLogits has no electricity mix for {zone} (provider "
                       f"{provider.name}): its requests get no energy or CO2e figures")
            return None
        if datacentre and datacentre.pue:
            pue = Span(*datacentre.pue)
        elif known:
            pue = _span(known.datacenter_pue)
        else:
            pue = _ANY_PUE
        return pue, float(mix.gwp), zone

    def _size(self, model: Model, route: Route, served: str | None
              ) -> tuple[Span, Span, float | None, float | None] | None:
        if model.impact is not None:
            params = model.impact
            return Span(*params.active_params), Span(*params.total_params), None, None
        routed = route.model
        # by the model's vendor, else by the provider (a name the catalog does not know)
        size = _ecologits_size(routed) or (_ecologits_size(served) if served else None) \
            or _ecologits_size(routed, _ecologits_provider(route.provider.name))
        if size is None:
            self._warn(routed, f"EcoLogits does not know model {routed!r} (config model "
                       f"{model.name!r}): its requests get no energy or CO2e figures; "
                       "set [models.impact] params to give them")
        return size

    def _warn(self, what: str, message: str) -> None:
        if what not in self._warned and len(self._warned) < _MAX_NAMES:
            self._warned.add(what)
            log.warning("%s", message)


def event_fields(impact: Impact | None) -> dict[str, Any]:
    """An event's energy and CO2e fields for `impact` (none when it is None)."""
    if impact is None:
        return {}
    return {"energy_wh": figure(impact.energy_wh.mid),
            "energy_wh_low": figure(impact.energy_wh.low),
            "energy_wh_high": figure(impact.energy_wh.high),
            "co2e_g": figure(impact.co2e_g.mid), "co2e_g_low": figure(impact.co2e_g.low),
            "co2e_g_high": figure(impact.co2e_g.high),
            "energy_ref": impact.ref, "energy_source": impact.source}


def figure(value: float) -> Decimal:
    """Six significant digits: the method is no more precise than that."""
    return Decimal(f"{value:.6g}")


def watts_per_core(provider: Provider) -> float | None:
    """A local model server's power per core, when its energy is measured: the config's, or
    the default for a server `tokometer serve` launches; None for a remote provider."""
    if provider.impact is not None and provider.impact.watts_per_core is not None:
        return provider.impact.watts_per_core
    local = urlsplit(provider.base_url).hostname in LOOPBACK
    return DEFAULT_WATTS_PER_CORE if provider.launch is not None and local else None


def _ecologits_size(name: str, provider: str | None = None
                    ) -> tuple[Span, Span, float | None, float | None] | None:
    """EcoLogits' parameters (billions) and measured speed for a model, if it lists it under
    `provider` (default: the model's vendor's)."""
    provider = provider or _ecologits_provider(name)
    found = models.find_model(provider=provider, model_name=name) if provider else None
    if found is None:
        return None
    params = found.architecture.parameters
    if isinstance(params, ParametersMoE):
        active, total = _span(params.active), _span(params.total)
    else:
        active = total = _span(params)
    deployment = found.deployment
    return (active, total, deployment.tps if deployment else None,
            deployment.ttft if deployment else None)


def _ecologits_provider(model_or_provider: str) -> str | None:
    info = vendor_of(model_or_provider)
    return _ECOLOGITS_PROVIDER.get(info.vendor if info else model_or_provider)


def _span(value: float | int | RangeValue) -> Span:
    if isinstance(value, RangeValue):
        return Span(float(value.min), float(value.max))
    return Span(float(value), float(value))


def _alpha3(region: str | None) -> str | None:
    country = pycountry.countries.get(alpha_2=region) if region else None
    return str(country.alpha_3) if country else None
