"""The control bench (``bench/control_bench.py``) in three parts, each over the next:

- `report`: the Markdown tables and the JSON of a run;
- `measurement`: what is timed and counted while one scale's services become Ready;
- `simulator`: the cluster of one scale (control plane, operator) and its simulated agents;

and `probes`, the raw readings (Prometheus pages, ``/proc``) the last two share.
"""
