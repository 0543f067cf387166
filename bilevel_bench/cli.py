"""`bilevel-bench`: the Hydra application. Thin on purpose: validate, run, say where results are."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from bilevel_bench import runner
from bilevel_bench.checks import ConfigError


def config_dir() -> str:
    """Configs ship inside the wheel (bilevel_bench/configs); in a checkout they are top-level."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(
        f"bilevel-bench configs not found next to {here}; reinstall the package"
    )


@hydra.main(config_path=config_dir(), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        row = runner.run(cfg, run_dir)
    except ConfigError as err:
        print(f"bilevel-bench: config error: {err}", file=sys.stderr)
        sys.exit(2)
    runs_csv = Path(cfg.results_dir) / "runs.csv"
    status = row["status"]
    headline = {
        k: row.get(k) for k in ("test_acc", "upper_error", "upper_loss") if row.get(k) is not None
    }
    summary = ", ".join(f"{k}={v:.4g}" for k, v in headline.items())
    print(
        f"[{status}] {row['task']}/{row['dataset']} solver={row['solver']} seed={row['seed']} "
        f"{summary} runtime={row['runtime_s']:.2f}s"
    )
    print(f"results: {run_dir / 'result.json'} (curve.csv beside it); row appended to {runs_csv}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
