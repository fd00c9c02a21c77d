"""The demo's traffic: its options, and the scripted scenarios as timed load-generator runs.

`incident` tells the story the dashboard is built to show: steady traffic, a consumer group
paused so lag builds, resumed so it drains, then a burst of failures so retries and dead
letters rise. With RabbitMQ (unless --no-rabbitmq) a phase comes before the burst in which
the thumbnailer's consumers are cancelled for a while, so the backlog of `thumbnails.jobs`
builds, then drains; with NATS (unless --no-nats) one in which the tracking service stops
fetching from its JetStream consumer, so the consumer's pending count on `SHIPMENTS` builds,
then drains; with Artemis (unless --no-artemis) one in which billing detaches its receiver, so
the backlog of the `invoices` queue builds, then drains. Phases scale to --duration (60 s by
default).
"""

from __future__ import annotations

from dataclasses import dataclass

SCENARIOS = {
    "steady": "constant traffic with the services' usual failures",
    "incident": "steady traffic; the processor group paused (lag builds); resumed (lag "
                "drains); with RabbitMQ, the thumbnailer paused (its queue backs up, then "
                "drains); with NATS, the tracking consumer paused (JetStream pending builds, "
                "then drains); with Artemis, billing paused (the invoices queue backs up, "
                "then drains); a burst of failures (retries, dead letters): 60 s, or "
                "--duration",
}
FAILURE_KNOBS = ("transient_failure", "permanent_failure", "callback_failure",
                 "inventory_failure")
BURST = {"transient_failure": 0.5, "permanent_failure": 0.15, "callback_failure": 0.3}
PAUSED_GROUP = "processor"  # one consumer group, so its lag stands out on the charts
PAUSED_QUEUE_CONSUMER = "thumbnailer"  # the RabbitMQ consumers of thumbnails.jobs
PAUSED_STREAM_CONSUMER = "tracking"  # the JetStream pull consumer of SHIPMENTS
PAUSED_INVOICE_CONSUMER = "billing"  # the Artemis receiver of the invoices queue
QUEUE_PAUSE_SHARE = 2 / 3  # of its phase: the rest shows the backlog draining
STORY_S = 60.0
STORES = ("sqlite", "postgresql")
MAX_COLLECTORS = 3  # the spans topic's partitions: a fourth collector would have none
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
    rabbitmq: bool = False  # the RabbitMQ leg runs (`flowscope demo` sets it unless told not)
    nats: bool = False  # the NATS leg runs (`flowscope demo` sets it unless told not)
    artemis: bool = False  # the Artemis leg runs (`flowscope demo` sets it unless told not)
    collectors: int = 1  # collectors in one consumer group (more than one: a shared store)
    store: str = "sqlite"  # "sqlite" (the file under FLOWSCOPE_HOME) or "postgresql"

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
        if self.store not in STORES:
            found.append(f"--store {self.store!r} is not one of {', '.join(STORES)}")
        if not 1 <= self.collectors <= MAX_COLLECTORS:
            found.append(f"--collectors {self.collectors} is not from 1 to {MAX_COLLECTORS} "
                         f"(the spans topic has {MAX_COLLECTORS} partitions)")
        elif self.collectors > 1 and self.store != "postgresql":
            found.append(f"--collectors {self.collectors} needs a store they share: add "
                         "--store postgresql (SQLite has one writer)")
        return found


@dataclass(frozen=True)
class Step:
    """What happens at_s seconds into the traffic: a phase to announce, a load run to start."""

    at_s: float
    text: str
    load: tuple[str, ...] = ()


def load_args(options: DemoOptions, duration_s: float, seed: int,
              failures: dict[str, float] | None = None,
              pause: tuple[float, float] | None = None, *, pause_group: str = PAUSED_GROUP
              ) -> tuple[str, ...]:
    """The `flowscope loadgen` arguments of one load run; pause is (after, for) seconds."""
    args = ["--rate", f"{options.rate:g}", "--duration", f"{duration_s:g}", "--seed", str(seed)]
    for name, value in (failures or dict(options.failures)).items():
        args += [f"--{name.replace('_', '-')}", f"{value:g}"]
    if pause is not None:
        args += ["--pause-group", pause_group, "--pause-after", f"{pause[0]:g}",
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
    phases = 4 + options.rabbitmq + options.nats + options.artemis
    part = (options.duration_s or STORY_S) / phases
    burst = dict(options.failures)
    burst.update({k: max(v, burst.get(k, 0.0)) for k, v in BURST.items()})
    steps = [
        Step(0.0, f"phase 1/{phases} steady: {rate}",
             load_args(options, 3 * part, options.seed, pause=(part, part))),
        Step(part, f"phase 2/{phases} paused: consumer group {PAUSED_GROUP} stops for "
             f"{round(part, 1):g}s; lag builds on files.uploaded"),
        Step(2 * part, f"phase 3/{phases} drain: {PAUSED_GROUP} resumes; the lag drains"),
    ]
    paused = round(part * QUEUE_PAUSE_SHARE, 1)
    if options.rabbitmq:
        steps.append(Step(
            len(steps) * part, f"phase {len(steps) + 1}/{phases} queue backlog: the "
            f"{PAUSED_QUEUE_CONSUMER}'s consumers stop for {paused:g}s; thumbnails.jobs backs "
            "up in RabbitMQ, then drains",
            load_args(options, part, options.seed + 2, pause=(0.0, paused),
                      pause_group=PAUSED_QUEUE_CONSUMER)))
    if options.nats:
        steps.append(Step(
            len(steps) * part, f"phase {len(steps) + 1}/{phases} stream backlog: the "
            f"{PAUSED_STREAM_CONSUMER} consumer stops fetching for {paused:g}s; its pending "
            "messages build on JetStream (SHIPMENTS), then drain",
            load_args(options, part, options.seed + 3, pause=(0.0, paused),
                      pause_group=PAUSED_STREAM_CONSUMER)))
    if options.artemis:
        steps.append(Step(
            len(steps) * part, f"phase {len(steps) + 1}/{phases} invoice backlog: "
            f"{PAUSED_INVOICE_CONSUMER} detaches its receiver for {paused:g}s; the invoices "
            "queue backs up in Artemis, then drains",
            load_args(options, part, options.seed + 4, pause=(0.0, paused),
                      pause_group=PAUSED_INVOICE_CONSUMER)))
    steps.append(Step(
        (phases - 1) * part, f"phase {phases}/{phases} failure burst: " + ", ".join(
            f"{k.replace('_', ' ')} {v:g}" for k, v in BURST.items()) +
        "; retries and dead letters rise",
        load_args(options, part, options.seed + 1, burst)))
    return steps


def steady_chunk(options: DemoOptions, at_s: float, index: int) -> Step:
    """More steady traffic for an unbounded run, each chunk with flows of its own."""
    text = f"steady traffic: {options.rate:g} flows/s until Ctrl-C" if index == 1 else ""
    return Step(at_s, text, load_args(options, CHUNK_S, options.seed + 1 + index))
