"""The demo's traffic: its options, and the scripted scenarios as timed load-generator runs.

`incident` tells the story the dashboard is built to show: steady traffic, a consumer group
paused so lag builds, resumed so it drains, then a burst of failures so retries and dead
letters rise. Phases scale to --duration (60 s by default).
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = {
    "steady": "constant traffic with the services' usual failures",
    "incident": "steady traffic; the processor group paused (lag builds); resumed (lag "
                "drains); a burst of failures (retries, dead letters): 60 s, or --duration",
}
FAILURE_KNOBS = ("transient_failure", "permanent_failure", "callback_failure",
                 "inventory_failure")
BURST = {"transient_failure": 0.5, "permanent_failure": 0.15, "callback_failure": 0.3}
PAUSED_GROUP = "processor"  # one consumer group, so its lag stands out on the charts
STORY_S = 60.0
CHUNK_S = 600.0


@dataclass(frozen=True)
class DemoOptions:
    """What `flowscope demo` was asked for."""

    duration_s: float | None = None
    scenario: str = "steady"
    rate: float = 20.0
    seed: int = 0
    failures: tuple[tuple[str, float], ...] = ()
    jaeger: bool = True
    dashboard: bool = True
    dashboard_port: int | None = None

    def problems(self) -> list[str]:
        """Every invalid option, named."""
        found = [f"--scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}"
                 ] if self.scenario not in SCENARIOS else []
        if self.duration_s is not None and self.duration_s <= 0:
            found.append(f"--duration {self.duration_s:g} is not a positive number of seconds")
        if self.rate <= 0:
            found.append(f"--rate {self.rate:g} is not a positive number of flows per second")
        found += [f"--{name.replace('_', '-')} {value:g} is not a probability (0-1)"
                  for name, value in self.failures if not 0 <= value <= 1]
        if self.dashboard_port is not None and not 0 < self.dashboard_port < 65536:
            found.append(f"--dashboard-port {self.dashboard_port} is not a TCP port")
        return found


@dataclass(frozen=True)
class Step:
    """What happens at_s seconds into the traffic: a phase to announce, a load run to start."""

    at_s: float
    text: str
    load: tuple[str, ...] = ()


def load_args(options: DemoOptions, duration_s: float, seed: int,
              failures: dict[str, float] | None = None,
              pause: tuple[float, float] | None = None) -> tuple[str, ...]:
    """The `flowscope loadgen` arguments of one load run."""
    args = ["--rate", f"{options.rate:g}", "--duration", f"{duration_s:g}", "--seed", str(seed)]
    for name, value in (failures or dict(options.failures)).items():
        args += [f"--{name.replace('_', '-')}", f"{value:g}"]
    if pause is not None:
        args += ["--pause-group", PAUSED_GROUP, "--pause-after", f"{pause[0]:g}",
                 "--pause-for", f"{pause[1]:g}"]
    return tuple(args)


def plan_steps(options: DemoOptions) -> list[Step]:
    """The scripted part of the run, in time order (more steady traffic follows when unbounded)."""
    rate = f"{options.rate:g} flows/s"
    if options.scenario == "steady":
        if options.duration_s is None:
            return []
        return [Step(0.0, f"steady traffic: {rate} for {options.duration_s:g}s",
                     load_args(options, options.duration_s, options.seed))]
    quarter = (options.duration_s or STORY_S) / 4
    burst = dict(options.failures)
    burst.update({k: max(v, burst.get(k, 0.0)) for k, v in BURST.items()})
    return [
        Step(0.0, f"phase 1/4 steady: {rate}",
             load_args(options, 3 * quarter, options.seed, pause=(quarter, quarter))),
        Step(quarter, f"phase 2/4 paused: consumer group {PAUSED_GROUP} stops for "
             f"{quarter:g}s; lag builds on files.uploaded"),
        Step(2 * quarter, f"phase 3/4 drain: {PAUSED_GROUP} resumes; the lag drains"),
        Step(3 * quarter, "phase 4/4 failure burst: " + ", ".join(
            f"{k.replace('_', ' ')} {v:g}" for k, v in BURST.items()) +
            "; retries and dead letters rise", load_args(options, quarter, options.seed + 1,
                                                         burst)),
    ]


def steady_chunk(options: DemoOptions, at_s: float, index: int) -> Step:
    """More steady traffic for an unbounded run, each chunk with flows of its own."""
    text = f"steady traffic: {options.rate:g} flows/s until Ctrl-C" if index == 1 else ""
    return Step(at_s, text, load_args(options, CHUNK_S, options.seed + 1 + index))
