"""The replay benchmark's parts (bench/bench_replay.py is its command): `table` trains
configs once into a cached table, `surrogate` gives any config a learning curve from it,
`sim` drives the product's searcher and scheduler in virtual time, `samplers` holds the
arms that are not the product's."""
