"""Energy and CO2e of one generation, by EcoLogits' method (ecologits.ai), with its own code.

EcoLogits models a request from the model's active and total parameters, the tokens it
generated and the request's measured latency: the GPUs the model needs, their energy per
generated token, the server's share of the time, the data centre's PUE, and the grid's
carbon intensity, plus the hardware's embodied emissions over that time. Its own functions
(`ecologits.impacts.llm`) do each step here; its `compute_llm_impacts` runs the same steps
through pydantic models at about 250 µs a call, too slow for the request path (tests hold
the two equal).

`Prepared` works each serving's constant part out once, with those functions; a request is
then a few multiplications. A range in the inputs (parameters of a model whose architecture
is not public, a PUE range) is a range out: the low end from the low inputs, the high end
from the high ones, and the figure their middle, as EcoLogits reports it.

EcoLogits models output only. Reading the prompt (prefill) costs energy too, processed in
parallel and compute-bound where decoding is one token at a time: a prompt token is taken
here to cost between a fiftieth and a tenth of a generated one on the same GPUs. That term is
our estimate, not EcoLogits', and `energy_ref` says it is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version

from ecologits.impacts import llm

ESTIMATED = "estimated"
MEASURED = "measured"
PREFILL_SHARE = (0.02, 0.1)  # a prompt token's energy, as a share of a generated token's
REF = f"ecologits {version('ecologits')} + prefill {PREFILL_SHARE[0]}-{PREFILL_SHARE[1]}"


@dataclass(frozen=True, slots=True)
class Span:
    """A figure with its range."""

    low: float
    high: float

    @property
    def mid(self) -> float:
        return (self.low + self.high) / 2


@dataclass(frozen=True, slots=True)
class Serving:
    """How a model is served, as the method needs it: parameters in billions (a range when
    unpublished), its measured speed if EcoLogits has one, the data centre and its grid."""

    active_params: Span
    total_params: Span
    tps: float | None  # tokens per second
    ttft: float | None  # seconds to the first token
    pue: Span
    grid_gwp: float  # kgCO2e per kWh of the zone's electricity
    zone: str  # ISO 3166-1 alpha-3, or WOR (the world's mix)


@dataclass(frozen=True, slots=True)
class Impact:
    energy_wh: Span
    co2e_g: Span
    ref: str
    source: str  # ESTIMATED or MEASURED


class Prepared:
    """A Serving with what does not change between its requests worked out once (the GPUs,
    their energy and time per token, the hardware's embodied emissions): a request's figures
    are then a few multiplications, in EcoLogits' order."""

    __slots__ = ("ends", "grid_gwp")

    def __init__(self, serving: Serving):
        self.grid_gwp = serving.grid_gwp
        self.ends = (_End(serving, serving.active_params.low, serving.total_params.low,
                          serving.pue.low, PREFILL_SHARE[0]),
                     _End(serving, serving.active_params.high, serving.total_params.high,
                          serving.pue.high, PREFILL_SHARE[1]))

    def impact(self, output_tokens: int, input_tokens: int, latency_s: float) -> Impact:
        """The request's energy and CO2e: EcoLogits' figures for its output, plus the prefill
        estimate for its input."""
        low, high = (end.kwh_kg(output_tokens, input_tokens, latency_s, self.grid_gwp)
                     for end in self.ends)
        return Impact(energy_wh=Span(low[0] * 1000, high[0] * 1000),
                      co2e_g=Span(low[1] * 1000, high[1] * 1000), ref=REF, source=ESTIMATED)


class _End:
    """One end of the ranges, as compute_llm_impacts_dag runs it with those inputs."""

    __slots__ = (
        "embodied_kg_per_second",
        "gpu_kwh_per_token",
        "gpus",
        "prefill_share",
        "pue",
        "seconds_per_token",
        "server_kwh_per_second",
        "ttft",
    )

    def __init__(self, serving: Serving, active: float, total: float, pue: float,
                 prefill_share: float):
        # llm.gpu_energy and llm.generation_latency, per token
        self.gpu_kwh_per_token = llm.gpu_energy(active, 1, llm.BATCH_SIZE, llm.GPU_ENERGY_ALPHA,
                                                llm.GPU_ENERGY_BETA, llm.GPU_ENERGY_GAMMA)
        self.seconds_per_token = (1 / serving.tps if serving.tps is not None else
                                  llm.LATENCY_ALPHA * active + llm.LATENCY_BETA * llm.BATCH_SIZE
                                  + llm.LATENCY_GAMMA)
        self.ttft = serving.ttft or 0
        self.gpus = llm.gpu_required_count(
            llm.model_required_memory(total, llm.MODEL_QUANTIZATION_BITS), llm.GPU_MEMORY)
        # llm.server_energy per second of generation, in kWh
        self.server_kwh_per_second = llm.server_energy(1, llm.SERVER_POWER, llm.SERVER_GPUS,
                                                       self.gpus, llm.BATCH_SIZE)
        self.pue = pue
        hardware = llm.server_gpu_embodied_gwp(llm.SERVER_EMBODIED_IMPACT_GWP, llm.SERVER_GPUS,
                                               llm.GPU_EMBODIED_IMPACT_GWP, self.gpus)
        self.embodied_kg_per_second = llm.request_embodied_gwp(hardware, llm.HARDWARE_LIFESPAN,
                                                               1, llm.BATCH_SIZE)
        self.prefill_share = prefill_share

    def kwh_kg(self, output_tokens: int, input_tokens: int, latency_s: float,
               grid_gwp: float) -> tuple[float, float]:
        gpu_latency = output_tokens * self.seconds_per_token + self.ttft
        latency = latency_s if latency_s < gpu_latency else gpu_latency
        it_energy = latency * self.server_kwh_per_second \
            + self.gpus * (output_tokens * self.gpu_kwh_per_token)
        energy = self.pue * it_energy
        # the prompt, read on the same GPUs: its share of a generated token's GPU energy
        prefill = self.pue * self.gpus * (input_tokens * self.prefill_share
                                          * self.gpu_kwh_per_token)
        return (energy + prefill,
                energy * grid_gwp + latency * self.embodied_kg_per_second + prefill * grid_gwp)
