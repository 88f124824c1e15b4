"""Prep the example SFT corpus inside Ray Data and Spark; check each equals `ferrotune prep`.

    python examples/prep_in_engines.py [--out /tmp/engines] [--engine ray|spark|both]

Runs locally (Ray on this machine's cores, Spark local[2] on the system's Java); on a cluster,
pass `ray.init(address=...)` / a Spark master instead: the code is the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import datasets

from ferrotune.data import Transform, prep_sft

EXAMPLES = Path(__file__).resolve().parent


def rows(folder: Path):
    return datasets.load_from_disk(str(folder)).data.table


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/ferrotune-engines"))
    parser.add_argument("--engine", choices=["ray", "spark", "both"], default="both")
    args = parser.parse_args()
    tokenizer, corpus = EXAMPLES / "tokenizer", EXAMPLES / "sft"
    local = args.out / "local"
    prep_sft(tokenizer, corpus, local, template="chatml", overwrite=True)
    transform = Transform("sft", tokenizer, template="chatml")

    if args.engine in ("ray", "both"):
        import ray

        from ferrotune.data import ray as ferrotune_ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ds = ferrotune_ray.read_records(corpus).map_batches(
            transform, batch_format="pyarrow", concurrency=2
        )
        manifest = ferrotune_ray.write_shards(ds, args.out / "ray", overwrite=True)
        same = rows(args.out / "ray").equals(rows(local))
        print(f"ray:   {manifest['rows']} rows, equal to prep: {same}")
        ray.shutdown()

    if args.engine in ("spark", "both"):
        from pyspark.sql import SparkSession

        from ferrotune.data import spark as ferrotune_spark

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.master("local[2]").config("spark.driver.memory", "4g")
        spark = builder.getOrCreate()
        records = ferrotune_spark.read_records(spark, corpus)
        batches = ferrotune_spark.transform(records, transform)
        manifest = ferrotune_spark.write_shards(batches, args.out / "spark", overwrite=True)
        same = rows(args.out / "spark").equals(rows(local))
        print(f"spark: {manifest['rows']} rows, equal to prep: {same}")
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
