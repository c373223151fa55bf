"""``musicflow generate``: clips from a trained model (the generate flow)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from musicflow.cli.common import (
    check_generate_options,
    open_existing_store,
    quiet_console,
    use_storage_options,
)
from musicflow.cli.options import (
    PhaseOption,
    SamplingOption,
    SeedChoice,
    StorageOptionsOption,
    StoreOption,
    VerboseOption,
)
from musicflow.cli.reports import print_generated


def generate(
    store: StoreOption,
    model: Annotated[str | None, typer.Option(help="Model id [default: the newest trained model].")] = None,
    seconds: Annotated[float, typer.Option(help="Length of each clip.")] = 10.0,
    count: Annotated[int, typer.Option(help="Number of clips.")] = 1,
    seed: Annotated[SeedChoice, typer.Option(help="What primes the model.")] = SeedChoice.validation,
    seed_audio: Annotated[str | None, typer.Option(help="An audio file to prime the model with.")] = None,
    temperature: Annotated[
        float | None,
        typer.Option(
            help="Spread of the samples of a spectral model (0 = its mean) [1]; noise fed back "
            "with each block of a small/gruv model [0]."
        ),
    ] = None,
    sampling: SamplingOption = None,
    phase: PhaseOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json.")] = False,
    storage_options: StorageOptionsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Generate clips from a trained model into STORE/generated/<run_id>/ (WAV, MP3, PNG, metrics)."""
    quiet_console(verbose)
    use_storage_options(store, storage_options)
    from musicflow.server import ensure_prefect_api  # lazy: start-up
    from tasks.model.repository import resolve_model  # lazy: start-up
    from tasks.store.store import check_writable  # lazy: start-up

    check_generate_options(seconds, count, temperature, seed_audio)
    opened = open_existing_store(store)
    resolve_model(opened, model)
    check_writable(opened)
    ensure_prefect_api()
    from flows.generate import generate as generate_flow  # lazy: start-up

    report = generate_flow(
        store=store,
        model=model,
        seconds=seconds,
        count=count,
        seed=seed.value,
        seed_audio=seed_audio,
        temperature=temperature,
        sampling=sampling.value if sampling else None,
        phase=phase.value if phase else None,
    )
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_generated(report)
